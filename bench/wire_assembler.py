"""Assembler throughput (envelope validation + base64 + sha256 + disk write) vs a bare tight loop.

Baseline: the same envelopes' bytes, base64-decoded with the same library (pybase64, as `wire.Assembler`
does), hashed and written with no envelope handling at all. The ratio says what the envelope's checks
cost on this machine. Runs alternate, baseline then Assembler, `--reps` times (A B A B A B); the ratio of
each pair is reported, min-max. Each run goes over the envelopes `--passes` times (a fresh directory, files
and Assembler each time), so a run lasts seconds, not the kernel's clock ticks.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pybase64

from bench import _results
from podstream import wire
from podstream.sinks import file_sinks


def baseline(envelopes: list[dict[str, Any]], passes: int) -> float:
    """Seconds for `passes` bare passes: decode, hash, write."""
    seconds = 0.0
    for _ in range(passes):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            files: dict[int, tuple[int, hashlib._Hash]] = {}
            for e in envelopes:
                data = pybase64.b64decode(e["data"], validate=True)
                if e["item"] not in files:
                    files[e["item"]] = (
                        os.open(Path(tmp) / str(e["item"]), os.O_WRONLY | os.O_CREAT),
                        hashlib.sha256(),
                    )
                fd, digest = files[e["item"]]
                digest.update(data)
                os.write(fd, data)
            for fd, digest in files.values():
                digest.hexdigest()
                os.close(fd)
            seconds += time.perf_counter() - start
    return seconds


def assembled(envelopes: list[dict[str, Any]], items: int, passes: int) -> float:
    """Seconds for `passes` passes of `wire.Assembler` to files."""
    seconds = 0.0
    for _ in range(passes):
        with tempfile.TemporaryDirectory() as tmp:
            asm = wire.Assembler("bench", sink=file_sinks(Path(tmp), fsync=False))
            start = time.perf_counter()
            for e in envelopes:
                asm.feed(e)
            seconds += time.perf_counter() - start
            assert len(asm.completed) == items
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--mb", type=int, default=8, help="size of each item in MB")
    parser.add_argument("--reps", type=int, default=3, help="pairs of runs (baseline, Assembler)")
    parser.add_argument("--passes", type=int, default=1, help="passes over the envelopes per run")
    _results.add_json_option(parser)
    args = parser.parse_args()
    blobs = [os.urandom(args.mb * 1_000_000) for _ in range(args.items)]
    env = wire.Envelopes("bench")
    envelopes = [e for i, b in enumerate(blobs) for e in env.parts(i, b, mime="video/mp4")]
    total = sum(len(b) for b in blobs)
    del blobs
    pairs = [
        (baseline(envelopes, args.passes), assembled(envelopes, args.items, args.passes))
        for _ in range(args.reps)
    ]
    total *= args.passes
    ratios = [b / a for b, a in pairs]

    largest = max(wire.body_size(e) for e in envelopes)
    print(
        f"bytes: {total / args.passes / 1e6:.0f} MB in {len(envelopes)} parts, {args.passes} passes a run; "
        f"largest POST body {largest} B (cap 1,000,000)"
    )
    for b, a in pairs:
        print(f"baseline tight loop {total / b / 1e6:.0f} MB/s, assembler to disk {total / a / 1e6:.0f} MB/s")
    print(
        f"ratio assembler/baseline: {min(ratios):.2f}-{max(ratios):.2f} (both with pybase64; target >= 0.5)"
    )
    _results.write(
        args.json,
        "wire_assembler",
        args,
        {
            "mb": total / 1e6,
            "ratios": ratios,
            "ratio": sorted(ratios)[len(ratios) // 2],
            "seconds": [list(p) for p in pairs],
        },
    )


if __name__ == "__main__":
    main()
