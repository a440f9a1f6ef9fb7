from __future__ import annotations

import pytest

from worker.model import Model


@pytest.fixture(scope="session")
def tiny() -> Model:
    """The embedded tiny pipelines, built once for the whole session (a few seconds on CPU)."""
    from worker.pipelines import load_model

    return load_model("tiny")
