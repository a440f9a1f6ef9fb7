"""The largest stream POST body of a job of 8 MB files, measured on the wire.

The real runpod SDK worker loop (`python -m worker` machinery, a controlled model making incompressible
8 MB files) runs as its own process against the emulator, which records the size of every body POSTed to
its job-stream route; a consumer drains `/stream` meanwhile and verifies every file (sha256) with the
Assembler. Baseline, computed for the same job: the one result body a handler returning every file as
base64 would send (what fails on RunPod above 20 MB).

    python -m bench.worker_wire                  # 20 x 8 MB
    python -m bench.worker_wire --items 1000     # the full figure (8 GB through HTTP: minutes)
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench import _results
from podstream import wire
from podstream.emulator import Emulator, EmulatorConfig

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}
#: 1000 x 8 MB takes about 10 min through the real SDK here, past RunPod's (and the emulator's) default
#: execution timeout of 600 s: the full form timed out at 658 files. A deployment of this size sets it too.
POLICY = {"executionTimeout": 3_600_000}


class HashSink:
    """Verifies an item without keeping it: parts arrive in order from one poller."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, offset: int, data: bytes) -> None:
        if offset != self.size:
            raise RuntimeError("parts out of order")
        self.digest.update(data)
        self.size += len(data)

    def finish(self, sha256: str) -> tuple[bool, Any]:
        return self.digest.hexdigest() == sha256, self.size

    def abort(self) -> None:
        pass


def serve(size: int) -> None:
    import worker
    from worker.model import SleepModel

    worker.serve(SleepModel(0.0, size, steps=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_wire")
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--mb", type=float, default=8.0)
    parser.add_argument("--serve", type=int, metavar="BYTES", help=argparse.SUPPRESS)  # the worker process
    _results.add_json_option(parser)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    size = int(args.mb * 1_000_000)
    job = {"task": "text-to-video", "items": [{"prompt": f"clip {i}", "seed": i} for i in range(args.items)]}
    with tempfile.TemporaryDirectory() as logs, Emulator(EmulatorConfig()).serve_in_thread() as emu:
        command = [sys.executable, "-m", "bench.worker_wire", "--serve", str(size)]
        emu.spawn_workers(1, command, cwd=ROOT, log_dir=logs)
        with httpx.Client(timeout=60) as client:
            job_id = client.post(f"{emu.endpoint_url}/run", json={"input": job, "policy": POLICY}).json()[
                "id"
            ]
            assembler = wire.Assembler(job_id, sink=lambda item, id, mime, size: HashSink())
            started = time.monotonic()
            first_file = None
            while True:
                body = client.get(f"{emu.endpoint_url}/stream/{job_id}", params={"wait": 5000}).json()
                for chunk in body.get("stream", []):
                    for event in assembler.feed(chunk["output"]):
                        if isinstance(event, wire.ItemComplete) and first_file is None:
                            first_file = time.monotonic() - started
                if body["status"] in TERMINAL and not body.get("stream"):
                    break
                if time.monotonic() - started > 3600:
                    print("gave up after an hour", file=sys.stderr)
                    return 1
            elapsed = time.monotonic() - started
        stream = emu.stats()["routes"]["job-stream"]
    problems = assembler.finish()
    largest = int(stream["max_request_bytes"])
    naive = len('{"output": []}') + args.items * (4 * math.ceil(size / 3) + 4)
    print(
        f"job: {args.items} x {size:,} bytes, status {body['status']}, {len(assembler.completed)} files verified"
    )
    print(f"problems: {[p.code for p in problems] or 'none'}")
    print(f"largest job-stream POST body: {largest:,} bytes; cap 1,000,000: ratio {largest / 1_000_000:.3f}")
    print(
        f"baseline (one result carrying every file): {naive:,} bytes; largest/baseline {largest / naive:.6f}"
    )
    print(
        f"time {elapsed:.1f} s, {args.items * size / elapsed / 1e6:.1f} MB/s; first file after {first_file or 0:.1f} s"
    )
    ok = body["status"] == "COMPLETED" and not problems and largest <= 1_000_000
    _results.write(
        args.json, "worker_wire", args,
        {"largest_body": largest, "cap": 1_000_000, "naive_body": naive, "seconds": elapsed,
         "first_file_s": first_file, "verified": len(assembler.completed), "ok": ok},
    )  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
