"""A real runpod SDK worker for the conformance tests: `runpod.serverless.start` with a handler chosen by env.

EMU_MODE: `async` (async generator), `sync` (generator), `plain` (returns its output), `returns_generator`
(a plain function that returns a generator: the SDK never streams it). EMU_AGGREGATE=1 sets
return_aggregate_stream; EMU_CONCURRENCY=N a concurrency_modifier
that asks for N jobs at once (the SDK then uses job-take-batch). Each job's input says what to do, so one process serves many tests:
  items, size      yield `items` dicts {"i": k, "data": "x" * size} (`sizes`: one size per item)
  sleep            seconds between items;  hold: seconds before the first
  raise_at         raise before item k;    error_at: yield {"error": ...} as item k
  mark             a file: "cancelled" is written there when the job is stopped, "finished" at its end
  output, raise, progress   (plain mode) the return value, an exception message, progress_update values
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import runpod


def _item(job_input: dict[str, Any], k: int) -> dict[str, Any]:
    sizes = job_input.get("sizes")
    size = sizes[k] if sizes else job_input.get("size", 0)
    return {"i": k, "data": "x" * size}


def _mark(job_input: dict[str, Any], text: str) -> None:
    if job_input.get("mark"):
        Path(job_input["mark"]).write_text(text)


async def async_handler(job: dict[str, Any]) -> AsyncIterator[Any]:
    job_input = job["input"]
    try:
        await asyncio.sleep(job_input.get("hold", 0))
        for k in range(job_input.get("items", 0)):
            if k == job_input.get("raise_at"):
                raise RuntimeError(f"boom at {k}")
            if k == job_input.get("error_at"):
                yield {"error": f"bad item {k}"}
            yield _item(job_input, k)
            await asyncio.sleep(job_input.get("sleep", 0))
    except asyncio.CancelledError:
        _mark(job_input, "cancelled")
        raise
    _mark(job_input, "finished")


def sync_handler(job: dict[str, Any]) -> Iterator[Any]:
    job_input = job["input"]
    time.sleep(job_input.get("hold", 0))
    for k in range(job_input.get("items", 0)):
        if k == job_input.get("raise_at"):
            raise RuntimeError(f"boom at {k}")
        if k == job_input.get("error_at"):
            yield {"error": f"bad item {k}"}
        yield _item(job_input, k)
        time.sleep(job_input.get("sleep", 0))
    _mark(job_input, "finished")


def plain_handler(job: dict[str, Any]) -> Any:
    job_input = job["input"]
    for value in job_input.get("progress", []):
        runpod.serverless.progress_update(job, value)
        time.sleep(job_input.get("sleep", 0.3))
    time.sleep(job_input.get("hold", 0))
    if job_input.get("raise"):
        raise ValueError(job_input["raise"])
    if "size" in job_input:
        return {"data": "x" * job_input["size"]}
    return job_input.get("output")


def returns_generator(job: dict[str, Any]) -> Any:
    return sync_handler(job)


HANDLERS = {
    "async": async_handler,
    "sync": sync_handler,
    "plain": plain_handler,
    "returns_generator": returns_generator,
}

if __name__ == "__main__":
    runpod.serverless.start(
        {
            "handler": HANDLERS[os.environ.get("EMU_MODE", "async")],
            "return_aggregate_stream": os.environ.get("EMU_AGGREGATE") == "1",
            "concurrency_modifier": lambda current: int(os.environ.get("EMU_CONCURRENCY", "1")),
        }
    )
