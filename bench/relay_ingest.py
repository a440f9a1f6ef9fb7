"""Relay ingest: RunPod `/stream` (the emulator) -> verified files on disk, vs this machine's tight loop.

Baseline, measured in the same run: a loop doing what ingest must do at the least, on the same bytes: parse
the `/stream` JSON body, base64-decode each part, sha256 it, write it to a file. The relay's figure is the
time from attaching to a job whose envelopes are all buffered at the emulator to its `done` record: the long
poll, the Assembler's checks, fsynced files renamed into place and journal records.

RunPod is the emulator in its own process (`bench._standins`), which encodes each entry when the worker posts
it, as RunPod does on its own machines. A second relay run follows a plainer stand-in (`http.server`, its own
process) that answers `/stream` with the same answer read from a file: the relay with nearly nothing else
running beside it.

    python -m bench.relay_ingest                # 20 x 4 MB
    python -m bench.relay_ingest --items 100 --mb 4
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pybase64

from bench import _results
from bench._relay_stack import stack
from bench._standins import buffered_job, emulator, pre_encoded
from podstream import wire

#: The bare loop decodes with the library the relay and the pull use (pybase64); `stdlib` re-runs it with
#: `base64.b64decode` to compare with figures from before the switch.
Decode = Callable[..., bytes]


def tight_loop(bodies: list[bytes], directory: Path, decode: Decode = pybase64.b64decode) -> float:
    start = time.perf_counter()
    files: dict[int, tuple[int, hashlib._Hash]] = {}
    for body in bodies:
        for entry in json.loads(body)["stream"]:
            env = entry["output"]
            if env["type"] != "part":
                continue
            data = decode(env["data"], validate=True)
            if env["item"] not in files:
                fd = os.open(directory / f"{env['item']}.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                files[env["item"]] = (fd, hashlib.sha256())
            fd, digest = files[env["item"]]
            digest.update(data)
            os.write(fd, data)
    for fd, digest in files.values():
        digest.hexdigest()
        os.fsync(fd)
        os.close(fd)
    return time.perf_counter() - start


async def relay_follows(base: str, job: str, fsync: str) -> tuple[float, dict[str, object], list[float]]:
    """A relay following RunPod at `base` attaches to `job`, whose envelopes are all buffered there:
    (seconds from attach to `done`, the `done` record, seconds from attach to each item record)."""
    async with stack(fsync=fsync, runpod_url=base) as s:
        start = time.perf_counter()
        await s.attach(job)
        seen: list[float] = []
        done = await s.wait_done(job, seen)
        return time.perf_counter() - start, done, [t - start for t in seen]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--mb", type=float, default=4.0, help="size of each item in MB")
    parser.add_argument("--fsync", choices=("always", "never"), default="always")
    _results.add_json_option(parser)
    args = parser.parse_args()
    blobs = [os.urandom(int(args.mb * 1_000_000)) for _ in range(args.items)]
    total = sum(len(b) for b in blobs)
    env = wire.Envelopes("job")
    envelopes = [e for i, b in enumerate(blobs) for e in env.parts(i, b, mime="video/mp4", id=f"c{i}")]
    envelopes += env.manifest(
        wire.ManifestItem(i, f"c{i}", "ok", "video/mp4", len(b), wire.sha256_hex(b), wire.part_count(len(b), wire.DEFAULT_PART_BYTES))
        for i, b in enumerate(blobs)
    )  # fmt: skip
    # the baseline parses /stream bodies of the same shape (the emulator hands out everything buffered at once)
    body = json.dumps(
        {"id": "job", "status": "COMPLETED", "stream": [{"output": e} for e in envelopes]}
    ).encode()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = tight_loop([body], Path(tmp))
        stdlib = tight_loop([body], Path(tmp), base64.b64decode)
    with emulator() as base:
        job = buffered_job(base, envelopes)
        relay_s, done, items_s = asyncio.run(relay_follows(base, job, args.fsync))
    assert done["items"] == args.items and done["errors"] == 0, done
    pre_body = json.dumps(
        {"id": "job", "status": "COMPLETED", "stream": [{"output": {**e, "job": "job"}} for e in envelopes]}
    ).encode()
    del body
    with pre_encoded(pre_body, "job") as base:
        pre_s, pre_done, _ = asyncio.run(relay_follows(base, "job", args.fsync))
    assert pre_done["items"] == args.items and pre_done["errors"] == 0, pre_done
    print(f"job: {args.items} items x {args.mb} MB = {total / 1e6:.0f} MB in {len(envelopes)} envelopes")
    print(f"baseline tight loop (JSON + pybase64 + sha256 + write): {total / baseline / 1e6:.0f} MB/s")
    print(f"relay /stream -> verified files (fsync={args.fsync}):   {total / relay_s / 1e6:.0f} MB/s")
    print(f"ratio relay/baseline: {baseline / relay_s:.2f} (target >= 0.8)")
    print(
        f"  (the bare loop with the stdlib's base64: {total / stdlib / 1e6:.0f} MB/s; relay/that: {stdlib / relay_s:.2f})"
    )
    print(
        f"backlog: first file seen by a subscriber after {items_s[0]:.2f} s, last after {items_s[-1]:.2f} s "
        f"(first/last {items_s[0] / items_s[-1]:.2f}; 1.00 = all at once)"
    )
    print(f"relay from a pre-encoded /stream answer:          {total / pre_s / 1e6:.0f} MB/s")
    print(f"ratio relay (plain stand-in, answer read from a file)/baseline: {baseline / pre_s:.2f}")
    _results.write(
        args.json, "relay_ingest", args,
        {"mb": total / 1e6, "baseline_mb_s": total / baseline / 1e6, "relay_mb_s": total / relay_s / 1e6,
         "ratio": baseline / relay_s, "pre_encoded_mb_s": total / pre_s / 1e6, "pre_encoded_ratio": baseline / pre_s, "stdlib_baseline_mb_s": total / stdlib / 1e6, "first_item_s": items_s[0], "last_item_s": items_s[-1]},
    )  # fmt: skip


if __name__ == "__main__":
    main()
