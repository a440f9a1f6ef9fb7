"""`podstream schema` as a real process: the built-in job schema, a user's model's, and its usage errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[2]


def schema_cmd(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podstream", "schema", *args],
        capture_output=True, text=True, timeout=60, check=False, cwd=cwd,
    )  # fmt: skip


def validator(text: str) -> Any:
    schema = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_built_in_schema_takes_good_jobs_and_names_the_bad_field() -> None:
    done = schema_cmd()
    assert done.returncode == 0, done.stderr
    check = validator(done.stdout)
    assert check.is_valid({"task": "text-to-image", "items": [{"prompt": "a cat"}], "params": {"steps": 4}})
    errors = list(
        check.iter_errors({"task": "text-to-imag", "items": [{"prompt": "a"}], "params": {"steps": -3}})
    )
    assert sorted("/".join(map(str, e.absolute_path)) for e in errors) == ["params/steps", "task"]


def test_the_schema_of_a_custom_input_model_from_a_file(tmp_path: Path) -> None:
    out = tmp_path / "schema.json"
    done = schema_cmd("--model", "examples/custom_input/sketch.py:Sketch", "--out", str(out))
    assert done.returncode == 0 and done.stdout == "", done.stderr
    check = validator(out.read_text())
    assert check.is_valid({"prompt": "a red kite", "num_images": 3, "palette": "cool"})
    assert not check.is_valid({"prompt": "a red kite", "palette": "red"})
    assert not check.is_valid({"task": "text-to-image", "items": []})  # it is not the built-in shape


def test_the_schema_of_a_model_object_in_a_module(tmp_path: Path) -> None:
    (tmp_path / "mine.py").write_text(
        "import worker\n"
        "def upscale(request, ctx):\n    raise NotImplementedError\n"
        "model = worker.FunctionModel(upscale, tasks={'upscale', 'denoise'})\n"
        "if __name__ == '__main__':\n    raise SystemExit('must not run')\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "podstream", "schema", "--model", "mine:model"],
        capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["properties"]["task"]["enum"] == ["denoise", "upscale"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "sketch"], "expected path/to/file.py:NAME or module:NAME"),
        (["--model", "nowhere.py:X"], "--model: no file nowhere.py"),
        (["--model", "no_such_module_xyz:X"], "--model: cannot import no_such_module_xyz"),
        (["--model", "examples/custom_input/sketch.py:Missing"], "has no 'Missing'"),
        (
            ["--model", "examples/custom_input/sketch.py:PALETTES"],
            "is a dict: give a pydantic model or a worker model",
        ),
        (["--model", "broken.py:X"], "--model: importing broken.py failed: ZeroDivisionError"),
        (["--out", "/nonexistent-dir/x.json"], "cannot write /nonexistent-dir/x.json"),
    ],
)
def test_usage_errors_are_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("1 / 0\n")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    done = schema_cmd(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
