"""`podstream.pull` ingest: RunPod `/stream` (the emulator) -> verified files on disk, vs a tight loop.

Baseline, measured in the same run: the least any consumer must do with the same bytes: parse the `/stream`
JSON body, base64-decode each part, sha256 it, write and fsync the files. The pull's figure is the time to
drain a job whose envelopes are all buffered at the emulator (its own process, as RunPod is; posted
there first by a scripted worker):
HTTP long-polls, the Assembler's checks (seq, sizes, sha256, manifest), files fsynced and renamed into
place. A ratio near 1 means the pull adds little over the unavoidable work.

    python -m bench.pull_ingest               # 20 x 4 MB
    python -m bench.pull_ingest --items 50 --mb 8
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pybase64

import podstream.puller as pull_mod
from bench import _results
from bench._standins import buffered_job, emulator, pre_encoded, stream_stats
from podstream import wire

#: The bare loop decodes with the library the relay and the pull use (pybase64); `stdlib` re-runs it with
#: `base64.b64decode` to compare with figures from before the switch.
Decode = Callable[..., bytes]


def tight_loop(body: bytes, directory: Path, decode: Decode = pybase64.b64decode) -> float:
    start = time.perf_counter()
    files: dict[int, tuple[int, Any]] = {}
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--mb", type=float, default=4.0, help="size of each item in MB")
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
    body = json.dumps(
        {"id": "job", "status": "COMPLETED", "stream": [{"output": e} for e in envelopes]}
    ).encode()
    with tempfile.TemporaryDirectory(prefix="podstream-bench-") as tmp:
        (Path(tmp) / "base").mkdir()
        baseline = tight_loop(body, Path(tmp) / "base")
        stdlib = tight_loop(body, Path(tmp) / "base", base64.b64decode)
        # Against a stand-in whose answer is encoded before the clock starts: the pull's own work only.
        with pre_encoded(body, "job") as base:
            start = time.perf_counter()
            pre_files = list(pull_mod.pull("job", runpod_url=base, key=None, out=Path(tmp) / "pre"))
            pre = time.perf_counter() - start
        assert sorted(f.item for f in pre_files) == list(range(args.items))
        del body
        with emulator() as base:
            job = buffered_job(base, envelopes)
            start = time.perf_counter()
            files = list(pull_mod.pull(job, runpod_url=base, key=None, out=Path(tmp) / "pull"))
            pulled = time.perf_counter() - start
            stream = stream_stats(base)
    assert sorted(f.item for f in files) == list(range(args.items))
    mb = total / 1e6
    print(f"{args.items} items x {args.mb:g} MB = {mb:.0f} MB, {len(envelopes)} envelopes")
    print(
        f"baseline tight loop (parse + pybase64 + sha256 + write + fsync): {baseline:.2f} s = {mb / baseline:.0f} MB/s"
    )
    print(
        f"podstream.pull from the emulator:                         {pulled:.2f} s = {mb / pulled:.0f} MB/s"
    )
    print(
        f"podstream.pull from a pre-encoded answer:                 {pre:.2f} s = {mb / pre:.0f} MB/s "
        f"(ratio {baseline / pre:.2f})"
    )
    print(
        f"  /stream requests: {stream['requests']}, largest answer {stream['max_response_bytes'] / 1e6:.1f} MB"
    )
    print(
        f"ratio pull / baseline throughput: {baseline / pulled:.2f} (target >= 0.8; 1.0 = as fast as the bare loop)"
    )
    print(
        f"  (the bare loop with the stdlib's base64: {mb / stdlib:.0f} MB/s; pull/that: {stdlib / pulled:.2f})"
    )
    _results.write(
        args.json, "pull_ingest", args,
        {"mb": mb, "baseline_mb_s": mb / baseline, "pull_mb_s": mb / pulled, "ratio": baseline / pulled,
         "stdlib_baseline_mb_s": mb / stdlib, "pre_encoded_mb_s": mb / pre, "pre_encoded_ratio": baseline / pre},
    )  # fmt: skip


if __name__ == "__main__":
    main()
