"""The module graph of relay/ and podstream/ has no cycles, counting every import: top-level ones, those
under `if TYPE_CHECKING:` and those inside functions. A cycle there means two modules each need the other's
pieces; the fix is to move the shared piece where it belongs, not to hide the import in a function."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("relay", "podstream", "worker")
#: Cycles known and not cleared yet, each with why (none now: keep it that way; a cycle means a piece lives
#: in the wrong module).
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()
#: The storage peers behind the seam (`relay.storage.job`, `relay.storage.protocols`).
PEERS: tuple[str, ...] = ("relay.storage.local", "relay.storage.cluster")
#: Outside relay/storage/, the one module that picks and builds a peer.
COMPOSITION_ROOT = "relay.service"
#: Cluster-mode settings are configuration (read by the CLI and the app factory), not storage.
CLUSTER_SETTINGS = "relay.storage.cluster.settings"
#: What the ingest side and the fan-out may import from storage: the seam, never a peer.
SEAM: frozenset[str] = frozenset(
    {"relay.storage.job", "relay.storage.errors", "relay.storage.protocols", "relay.storage.quota"}
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(packages: tuple[str, ...] = ("relay", "podstream")) -> dict[str, Path]:
    return {module_name(p): p for package in packages for p in sorted((ROOT / package).rglob("*.py"))}


def resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    """The absolute module a `from ... import` reads from (relative imports counted from the importer)."""
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")
    # `from . import x` in a package's __init__ is relative to the package itself, elsewhere to the parent
    drop = node.level - 1 if is_package else node.level
    base = base[: len(base) - drop] if drop else base
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(source: str, importer: str, is_package: bool, modules: set[str]) -> set[str]:
    """The project modules one module imports anywhere in its text (ast.walk sees every nesting)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            source_module = resolve(node, importer, is_package)
            for alias in node.names:
                # `from relay import uploads` imports the submodule; `from relay.storage.local.store import X` the module
                submodule = f"{source_module}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                elif source_module in modules:
                    found.add(source_module)
    found.discard(importer)
    return found


def import_graph(packages: tuple[str, ...] = ("relay", "podstream")) -> dict[str, set[str]]:
    modules = project_modules(packages)
    names = set(modules)
    return {
        name: imports_of(path.read_text(), name, path.name == "__init__.py", names)
        for name, path in modules.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (depth-first search, colouring the nodes)."""
    on_path: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: finished, no cycle through it

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        on_path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*on_path[on_path.index(target) :], target]
            if target not in state:
                cycle = visit(target)
                if cycle is not None:
                    return cycle
        on_path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle is not None:
                return cycle
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles of the graph, one at a time: each found is broken at its last edge and the search goes on."""
    graph = {node: set(targets) for node, targets in graph.items()}
    found = []
    while (cycle := find_cycle(graph)) is not None:
        found.append(cycle)
        graph[cycle[-2]].discard(cycle[-1])
    return found


def test_the_project_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    # the walk must see the imports that matter, or an empty graph would pass
    assert "relay.storage.job" in graph["relay.ingest.poller"]
    assert "podstream.wire" in graph["podstream.sinks"]
    found = cycles(graph)
    new = [cycle for cycle in found if frozenset(cycle) not in KNOWN_CYCLES]
    assert not new, "import cycle(s): " + "; ".join(" -> ".join(cycle) for cycle in new)
    gone = KNOWN_CYCLES - {frozenset(cycle) for cycle in found}
    assert not gone, f"no longer a cycle, remove from KNOWN_CYCLES: {sorted(sorted(c) for c in gone)}"


def test_imports_under_type_checking_and_in_functions_count() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from relay.service import Relay\n"
        "def f() -> None:\n"
        "    import relay.storage.local.store\n"
        "    from relay.api import uploads\n"
        "    from . import limits\n"
    )
    modules = {
        "relay",
        "relay.api",
        "relay.service",
        "relay.storage.local.store",
        "relay.api.uploads",
        "relay.api.limits",
        "relay.api.links",
    }
    found = imports_of(source, "relay.api.links", False, modules)
    assert found == {"relay.service", "relay.storage.local.store", "relay.api.uploads", "relay.api.limits"}


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
        ({"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": set()}, None),
    ],
)
def test_find_cycle_names_the_cycle(graph: dict[str, set[str]], expected: list[str] | None) -> None:
    assert find_cycle(graph) == expected


def test_cycles_finds_each_cycle() -> None:
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}}
    assert cycles(graph) == [["a", "b", "a"], ["c", "d", "c"]]
    assert graph["b"] == {"a", "c"}  # the caller's graph is left whole


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports that go against the layers (docs/relay.md, "Where things are")."""
    found = []
    for module, targets in sorted(graph.items()):
        if not module.startswith("relay"):
            continue
        peer = next((p for p in PEERS if module.startswith(p + ".") or module == p), None)
        for target in sorted(targets):
            target_peer = next((p for p in PEERS if target.startswith(p + ".") or target == p), None)
            if target.startswith("worker"):
                found.append(f"{module} -> {target}: the relay never imports the worker (GPU) package")
            elif peer is not None and target_peer is not None and peer != target_peer:
                found.append(f"{module} -> {target}: one storage peer imports the other")
            elif (
                peer is None
                and target_peer is not None
                and not module.startswith("relay.storage")
                and module != COMPOSITION_ROOT
                and target != CLUSTER_SETTINGS
            ):
                found.append(f"{module} -> {target}: only {COMPOSITION_ROOT} picks a storage peer")
            elif (
                module.startswith(("relay.ingest", "relay.hub"))
                and target.startswith("relay.storage")
                and target not in SEAM
            ):
                found.append(f"{module} -> {target}: ingest and fan-out reach storage through the seam only")
    return found


def test_the_relay_imports_follow_its_layers() -> None:
    graph = import_graph(("relay", "podstream", "worker"))
    assert "relay.storage.job" in graph["relay.storage.local.store"]  # the walk sees the graph
    assert layer_violations(graph) == []


@pytest.mark.parametrize(
    ("module", "target", "rule"),
    [
        ("relay.api.input_schema", "worker.inputs", "never imports the worker"),
        (
            "relay.storage.local.store",
            "relay.storage.cluster.job_store",
            "one storage peer imports the other",
        ),
        (
            "relay.storage.cluster.job_store",
            "relay.storage.local.media",
            "one storage peer imports the other",
        ),
        ("relay.api.app", "relay.storage.local.jobs", "only relay.service picks"),
        ("relay.ingest.poller", "relay.storage.input_store", "through the seam only"),
    ],
)
def test_each_layer_rule_catches_its_violation(module: str, target: str, rule: str) -> None:
    (violation,) = layer_violations({module: {target}})
    assert rule in violation
    assert layer_violations({"relay.service": {"relay.storage.local.jobs"}}) == []
    assert layer_violations({"relay.api.app": {CLUSTER_SETTINGS}}) == []
