"""relay.api.input_schema: one line naming the field; when the built-in schema refuses an input as a whole,
how to run the relay for a worker that takes its own input."""

from __future__ import annotations

import json
from pathlib import Path

from relay.api.input_schema import OWN_INPUT_HINT, InputSchema

WRAPPED_INPUT = {"prompt": "a lighthouse", "num_images": 6}  # a wrapped handler's own input


def test_an_input_of_another_shape_says_how_to_run_the_relay() -> None:
    problem = InputSchema("builtin").problem(WRAPPED_INPUT)
    assert problem is not None and problem.startswith("(the input): Additional properties are not allowed")
    assert problem.endswith(f"; {OWN_INPUT_HINT}") and "--input-schema off" in OWN_INPUT_HINT


def test_a_mistake_inside_a_builtin_input_is_only_named() -> None:
    job = {"task": "text-to-image", "items": [{"id": "a", "promt": "x"}]}
    problem = InputSchema("builtin").problem(job)
    assert problem is not None and problem.startswith("items[0]: Additional properties")
    assert OWN_INPUT_HINT not in problem


def test_a_schema_file_or_off_gives_no_hint(tmp_path: Path) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"type": "object", "required": ["sizes"]}))
    problem = InputSchema(str(path)).problem(WRAPPED_INPUT)
    assert problem == "(the input): 'sizes' is a required property"
    assert InputSchema("off").problem(WRAPPED_INPUT) is None
