"""A wrapped handler's result, written next to its files: `result.json` with each file's path in place.

`worker.wrap` sends the handler's value with each file replaced by `{"$file": item}` (docs/protocol.md,
"The result"). A consumer that saved the files puts them back: each reference becomes the file's path
relative to the output directory, or `null` for an item that did not arrive. Written atomically (temp file,
then rename), so a `result.json` that exists is whole.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final

from podstream import wire

RESULT_NAME: Final = "result.json"


def with_paths(value: Any, out: Path, paths: Mapping[int, Path]) -> Any:
    """`value` with `{"$file": i}` replaced by item i's path relative to `out` (None when it has none)."""

    def replace(item: int) -> str | None:
        path = paths.get(item)
        if path is None:
            return None
        try:
            return path.relative_to(out).as_posix()
        except ValueError:
            return str(path)

    return wire.substitute(value, replace)


def write_result(out: Path, result: wire.ResultReceived | None, files: Iterable[Any]) -> Path | None:
    """Write `out/result.json` for a job that sent a result (`files`: anything with `item` and `path`)."""
    return None if result is None else write_value(out, result.value, files)


def write_value(out: Path, raw: Any, files: Iterable[Any]) -> Path:
    """Write `out/result.json` from a result value as sent (references still `{"$file": i}`)."""
    paths = {f.item: Path(f.path) for f in files}
    value = with_paths(raw, out, paths)
    target = out / RESULT_NAME
    temp = out / f".{RESULT_NAME}.part"
    out.mkdir(parents=True, exist_ok=True)
    temp.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(temp, target)
    return target
