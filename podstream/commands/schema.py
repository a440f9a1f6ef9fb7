"""`podstream schema`: the JSON Schema of the job input a worker takes, from its pydantic models.

By default the built-in models' job shape (`{"task", "items", "params", "output", "delivery"}`); with
`--model REF` that of your own worker: REF is `path/to/file.py:NAME` or `package.module:NAME`, where NAME
is the pydantic input model itself, or a model object (`worker.FunctionModel`, a `podstream.Model`) whose
`input_model` (or, without one, its task names) decides the schema. The file is imported, not run: keep
`podstream.serve(...)` under `if __name__ == "__main__":`. The relay's `--input-schema` takes the output.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from podstream.cli import UsageError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        metavar="REF",
        help="your worker's input model or model: path/to/file.py:NAME or module:NAME",
    )
    parser.add_argument(
        "--tasks", metavar="TASK", nargs="+", help="task names the worker does (built-in shape only)"
    )
    parser.add_argument("--out", metavar="FILE", type=Path, help="write the schema here instead of stdout")


def run(args: argparse.Namespace) -> int:
    try:
        from pydantic import BaseModel

        from podstream.jobspec import job_schema
    except ImportError as exc:
        raise UsageError(
            f"the worker's input models need pydantic ({exc}); pip install 'podstream[worker]'"
        ) from None
    if args.model is None:
        schema = job_schema(tasks=args.tasks)
    else:
        target = _resolve(args.model)
        if isinstance(target, type) and issubclass(target, BaseModel):
            schema = job_schema(target)
        elif isinstance(getattr(target, "input_model", None), type):
            schema = job_schema(target.input_model)
        elif getattr(target, "tasks", None):
            schema = job_schema(tasks=args.tasks or sorted(target.tasks))
        else:
            raise UsageError(
                f"{args.model} is a {type(target).__name__}: give a pydantic model or a worker model"
            )
    text = json.dumps(schema, indent=2) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        try:
            args.out.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {args.out}: {exc.strerror}") from None
    return 0


def _resolve(ref: str) -> Any:
    where, sep, name = ref.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise UsageError(f"--model {ref!r}: expected path/to/file.py:NAME or module:NAME")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise UsageError(f"--model: no file {where}")
        spec = importlib.util.spec_from_file_location(f"_podstream_schema_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise UsageError(f"--model: cannot import {where}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # pydantic resolves the module's annotations through it
        sys.path.insert(0, str(path.parent.resolve()))  # as `python file.py` would see its neighbours
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise UsageError(f"--model: importing {where} failed: {type(exc).__name__}: {exc}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise UsageError(f"--model: cannot import {where}: {exc}") from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise UsageError(f"--model: {where} has no {name!r}") from None
