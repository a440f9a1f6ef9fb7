"""Relay ingest: RunPod `/stream` (the emulator) -> verified files on disk, vs this machine's tight loop.

Baseline, measured in the same run: a loop doing what ingest must do at the least, on the same bytes: parse
the `/stream` JSON body, base64-decode each part, sha256 it, write it to a file. The relay's figure is the
time from attaching to a job whose envelopes are all buffered at the emulator to its `done` record: the long
poll, the Assembler's checks, fsynced files renamed into place and journal records.

RunPod is the emulator in its own process (`bench._standins`), which encodes each entry when the worker posts
it, as RunPod does on its own machines. A second relay run follows a plainer stand-in (`http.server`, its own
process) that answers `/stream` with the same answer read from a file: the relay with nearly nothing else
running beside it.

Runs alternate, baseline then relay then relay from the pre-encoded answer, `--reps` times (A B C A B C ...),
so all three see the same machine load; each ratio is of one rep's baseline and relay runs, given min-max.
Each run ingests the job `--passes` times (a fresh relay and a fresh copy of the job each time, the clock
running from attach to `done` only) so that a run of a small job still lasts seconds.

The ratio rises with the job's size: the baseline decodes the whole `/stream` body as one JSON document, so
its time grows with the body, while the relay takes the answer in pieces as they arrive and overlaps
receiving with decoding and writing; at small sizes the relay's fixed costs per job (the long poll's round
trips, job.json, the first fsyncs) weigh more.

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
    parser.add_argument("--reps", type=int, default=3, help="rounds of baseline, relay, relay pre-encoded")
    parser.add_argument("--passes", type=int, default=1, help="jobs ingested per run")
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
    pre_body = json.dumps(
        {"id": "job", "status": "COMPLETED", "stream": [{"output": {**e, "job": "job"}} for e in envelopes]}
    ).encode()
    with tempfile.TemporaryDirectory() as tmp:
        stdlib = tight_loop([body], Path(tmp), base64.b64decode)
    baselines: list[float] = []
    relays: list[float] = []
    pres: list[float] = []
    items_s: list[float] = []
    with emulator() as base:
        for _rep in range(args.reps):  # interleaved: baseline, relay, relay pre-encoded; again
            with tempfile.TemporaryDirectory() as tmp:
                baselines.append(sum(tight_loop([body], Path(tmp)) for _ in range(args.passes)))
            relay_s = 0.0
            for _ in range(args.passes):
                job = buffered_job(base, envelopes)
                seconds, done, seen = asyncio.run(relay_follows(base, job, args.fsync))
                assert done["items"] == args.items and done["errors"] == 0, done
                relay_s += seconds
                items_s = items_s or seen
            relays.append(relay_s)
            pre_s = 0.0
            for _ in range(args.passes):
                with pre_encoded(pre_body, "job") as pre_base:
                    seconds, pre_done, _ = asyncio.run(relay_follows(pre_base, "job", args.fsync))
                assert pre_done["items"] == args.items and pre_done["errors"] == 0, pre_done
                pre_s += seconds
            pres.append(pre_s)
    del body
    ratios = [b / r for b, r in zip(baselines, relays, strict=True)]
    pre_ratios = [b / r for b, r in zip(baselines, pres, strict=True)]
    baseline, relay_s, pre_s = min(baselines), min(relays), min(pres)
    runs = total * args.passes
    print(
        f"job: {args.items} items x {args.mb} MB = {total / 1e6:.0f} MB in {len(envelopes)} envelopes; "
        f"{args.passes} per run, {args.reps} reps"
    )
    print(f"baseline tight loop (JSON + pybase64 + sha256 + write): {runs / baseline / 1e6:.0f} MB/s (best)")
    print(f"relay /stream -> verified files (fsync={args.fsync}):   {runs / relay_s / 1e6:.0f} MB/s (best)")
    print(f"ratio relay/baseline: {min(ratios):.2f}-{max(ratios):.2f} (target >= 0.8)")
    print(
        f"  (the bare loop with the stdlib's base64: {total / stdlib / 1e6:.0f} MB/s, not a ratio's baseline)"
    )
    print(
        f"backlog: first file seen by a subscriber after {items_s[0]:.2f} s, last after {items_s[-1]:.2f} s "
        f"(first/last {items_s[0] / items_s[-1]:.2f}; 1.00 = all at once)"
    )
    print(f"relay from a pre-encoded /stream answer:          {runs / pre_s / 1e6:.0f} MB/s (best)")
    print(
        f"ratio relay (plain stand-in, answer read from a file)/baseline: {min(pre_ratios):.2f}-{max(pre_ratios):.2f}"
    )
    _results.write(
        args.json, "relay_ingest", args,
        {"mb": total / 1e6, "baseline_mb_s": runs / baseline / 1e6, "relay_mb_s": runs / relay_s / 1e6,
         "ratio": sorted(ratios)[len(ratios) // 2], "ratios": ratios, "pre_encoded_mb_s": runs / pre_s / 1e6,
         "pre_encoded_ratio": sorted(pre_ratios)[len(pre_ratios) // 2], "pre_encoded_ratios": pre_ratios,
         "baseline_s": baselines, "relay_s": relays, "pre_encoded_s": pres,
         "stdlib_baseline_mb_s": total / stdlib / 1e6, "first_item_s": items_s[0], "last_item_s": items_s[-1]},
    )  # fmt: skip


if __name__ == "__main__":
    main()
