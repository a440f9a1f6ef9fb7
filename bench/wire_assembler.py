"""Assembler throughput (envelope validation + base64 + sha256 + disk write) vs a bare tight loop.

Baseline: the same bytes, base64-decoded, hashed and written with no envelope handling at all. The ratio
says what the envelope's checks cost on this machine.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import tempfile
import time
from pathlib import Path

from bench import _results
from podstream import wire
from podstream.sinks import file_sinks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--mb", type=int, default=8, help="size of each item in MB")
    _results.add_json_option(parser)
    args = parser.parse_args()
    blobs = [os.urandom(args.mb * 1_000_000) for _ in range(args.items)]
    env = wire.Envelopes("bench")
    envelopes = [e for i, b in enumerate(blobs) for e in env.parts(i, b, mime="video/mp4")]
    total = sum(len(b) for b in blobs)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        files: dict[int, tuple[int, hashlib._Hash]] = {}
        for e in envelopes:
            data = base64.b64decode(e["data"], validate=True)
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
        baseline = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        asm = wire.Assembler("bench", sink=file_sinks(Path(tmp), fsync=False))
        start = time.perf_counter()
        for e in envelopes:
            asm.feed(e)
        assembled = time.perf_counter() - start
        assert len(asm.completed) == args.items

    largest = max(wire.body_size(e) for e in envelopes)
    print(
        f"bytes: {total / 1e6:.0f} MB in {len(envelopes)} parts; largest POST body {largest} B (cap 1,000,000)"
    )
    print(f"baseline tight loop: {total / baseline / 1e6:.0f} MB/s")
    print(f"assembler to disk:   {total / assembled / 1e6:.0f} MB/s")
    print(f"ratio assembler/baseline: {baseline / assembled:.2f} (target >= 0.5)")
    _results.write(args.json, "wire_assembler", args, {"mb": total / 1e6, "ratio": baseline / assembled})


if __name__ == "__main__":
    main()
