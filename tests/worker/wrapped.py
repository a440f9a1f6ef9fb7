"""Existing-style RunPod handlers, wrapped with `worker.wrap` and run by the real SDK worker loop.

`python -m tests.worker.wrapped` with WRAP_MODE = `function` | `async_function` | `generator` |
`async_generator` | `raises` | `error_dict`. Each job's input: `files` (how many), `size` (bytes of each),
`fail_at` (raise, or return an error dict, after that many files).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any


def payload(k: int, size: int) -> bytes:
    """Incompressible, distinct, reproducible bytes for file k (a consumer recomputes them to compare)."""
    block = hashlib.sha256(f"file-{k}".encode()).digest()
    return (block * (size // 32 + 1))[:size]


def b64(k: int, size: int) -> str:
    return base64.b64encode(payload(k, size)).decode("ascii")


def function(job: dict[str, Any]) -> Any:
    spec = job["input"]
    return {"images": [b64(k, spec["size"]) for k in range(spec["files"])], "count": spec["files"]}


async def async_function(job: dict[str, Any]) -> Any:
    await asyncio.sleep(0)
    return function(job)


def generator(job: dict[str, Any]) -> Iterator[Any]:
    spec = job["input"]
    for k in range(spec["files"]):
        yield {"index": k, "video": f"data:video/mp4;base64,{b64(k, spec['size'])}"}


async def async_generator(job: dict[str, Any]) -> AsyncIterator[Any]:
    spec = job["input"]
    for k in range(spec["files"]):
        if k == spec.get("fail_at"):
            raise RuntimeError(f"the GPU fell over at file {k}")
        yield {"index": k, "image": b64(k, spec["size"])}
        await asyncio.sleep(0)


async def error_dict(job: dict[str, Any]) -> AsyncIterator[Any]:
    spec = job["input"]
    for k in range(spec["files"]):
        if k == spec.get("fail_at"):
            yield {"error": f"out of memory at file {k}"}
        yield {"image": b64(k, spec["size"])}


HANDLERS: dict[str, Any] = {
    "function": function,
    "async_function": async_function,
    "generator": generator,
    "async_generator": async_generator,
    "raises": async_generator,
    "error_dict": error_dict,
}

if __name__ == "__main__":
    import runpod

    import worker

    handler = worker.wrap(HANDLERS[os.environ.get("WRAP_MODE", "function")])
    runpod.serverless.start({"handler": handler, "return_aggregate_stream": False})
