"""How the suite runs on several workers (`make test`: pytest-xdist, `-n 4 --dist loadgroup`).

Every test starts what it needs on free loopback ports under its own tmp_path, so tests run side by side in
separate processes. A fixture shared wider than one test (scope module or session: a relay process, an
emulator with SDK worker processes, the tiny pipelines) is built once per worker process that uses it, so
the tests that use it are kept on one worker: each gets the `xdist_group` of that fixture, unless it names
a group itself. Without xdist (a plain `pytest`) the marker does nothing.
"""

from __future__ import annotations

import pytest


def _shared_fixture(item: pytest.Item) -> str | None:
    """The first (by name) of this project's fixtures wider than a function that `item` uses."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return None
    for name in sorted(info.name2fixturedefs):
        fixturedef = info.name2fixturedefs[name][-1]
        module = getattr(fixturedef.func, "__module__", "") or ""
        if module.startswith("tests.") and fixturedef.scope != "function":
            return f"{module}::{name}"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None and (group := _shared_fixture(item)) is not None:
            item.add_marker(pytest.mark.xdist_group(group))
