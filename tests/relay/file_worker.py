"""A real podstream worker process for the relay tests: `python -m tests.relay.file_worker` (cwd: the repo).

It is `worker.start.serve` (the runpod SDK's worker loop, the real handler, cache and uploader, configured
from `PODSTREAM_*` like a deployed worker) with a model that needs no torch: item k of a `text-to-video` job
is `file_bytes(k, int(prompt))`, after sleeping `FILE_WORKER_SLEEP_S` seconds (so a job's envelopes come out
spread over several `/stream` answers).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time

from worker.model import Context, File, FunctionModel, Request, Result


def file_bytes(item: int, size: int) -> bytes:
    """Deterministic, incompressible-enough bytes for item `item` (tests recompute them to compare)."""
    seed = hashlib.sha256(f"item-{item}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


def generate(request: Request, ctx: Context) -> Result:
    time.sleep(float(os.environ.get("FILE_WORKER_SLEEP_S", "0")))
    return File(file_bytes(request.index, int(request.prompt or "0")), "video/mp4")


def main() -> None:
    from worker.start import serve

    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    serve(FunctionModel(generate, {"text-to-video"}))


if __name__ == "__main__":
    main()
