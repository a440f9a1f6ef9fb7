"""Relay memory: peak RSS while a job streams live through it to K subscribers, for jobs of several sizes.

The worker (scripted, posting to the emulator) streams the job while K websocket subscribers follow it live.
Each size runs against a fresh relay process, and its peak is the kernel's own record of that process's
high-water mark (`VmHWM` in /proc/PID/status), read after the last subscriber got `done`: nothing sampled,
nothing missed between samples. Memory must be bounded by configuration, not by job size or subscriber
count: the biggest job's peak should be within 20% of the smallest's (and under 200 MB).

    python -m bench.relay_memory                                  # 20 and 200 MB jobs, 10 subscribers
    python -m bench.relay_memory --sizes 200,1000,2000 --subscribers 50
"""

from __future__ import annotations

import argparse
import asyncio
import os

import msgpack
import psutil
import websockets

from bench import _results
from bench._relay_stack import stack
from podstream import wire

ITEM_MB = 4


async def follow(url: str, job: str) -> int:
    got = 0
    async with websockets.connect(url, compression=None, max_size=2**22) as ws:
        await ws.send(msgpack.packb({"t": "sub", "job": job, "from": 0}))
        async for raw in ws:
            frame = msgpack.unpackb(raw)  # type: ignore[arg-type]
            if frame["t"] == "chunk":
                got += len(frame["data"])
            elif frame["t"] == "ping":
                await ws.send(msgpack.packb({"t": "pong", "n": frame["n"]}))
            elif frame["t"] in ("err", "bye") or (frame["t"] == "ev" and frame["k"] == "error"):
                raise RuntimeError(f"the relay said: {frame}")
            elif frame["t"] == "ev" and frame["k"] == "done":
                return got
    return got


async def peak_rss(total_mb: float, subscribers: int) -> tuple[float, float]:
    """(idle RSS before the job, VmHWM after it), in MiB, of a fresh relay process."""
    items = max(1, round(total_mb / ITEM_MB))
    blob = os.urandom(ITEM_MB * 1_000_000)
    async with stack() as s:
        idle = psutil.Process(s.process.pid).memory_info().rss / 2**20
        job = await s.run_job()
        await s.attach(job)
        assert await s.take() == job
        followers = [asyncio.ensure_future(follow(s.ws_url, job)) for _ in range(subscribers)]
        env = wire.Envelopes(job)
        manifest: list[wire.ManifestItem] = []
        for i in range(items):  # distinct items: the same bytes with a different first byte
            data = bytes([i % 256]) + blob[1:]
            parts = list(env.parts(i, data, mime="video/mp4"))
            for envelope in parts:
                await s.post(job, envelope)
            manifest.append(
                wire.ManifestItem(i, "", "ok", "video/mp4", len(data), wire.sha256_hex(data), len(parts))
            )
        # The manifest ends the job as a real worker's does (without it the relay sends a resend job for
        # the missing end and waits for it: PODSTREAM_RECOVERY_TIMEOUT_S).
        for envelope in env.manifest(manifest):
            await s.post(job, envelope)
        await s.done(job)
        received = await asyncio.gather(*followers)
        assert all(r == items * len(blob) for r in received), received
        return idle, _results.peak_rss_mb(s.process.pid)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="20,200", help="comma-separated job sizes in MB")
    parser.add_argument("--subscribers", type=int, default=10)
    _results.add_json_option(parser)
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    rows = []
    for mb in sizes:
        idle, peak = asyncio.run(peak_rss(mb, args.subscribers))
        rows.append({"job_mb": mb, "idle_mb": idle, "peak_mb": peak})
        print(
            f"{mb:6.0f} MB job to {args.subscribers} subscribers: idle {idle:.0f} MiB, peak (VmHWM) {peak:.0f} MiB"
        )
    ratio = rows[-1]["peak_mb"] / rows[0]["peak_mb"]
    print(f"ratio biggest/smallest peak: {ratio:.2f} (target <= 1.20; biggest <= 200 MiB)")
    _results.write(
        args.json, "relay_memory", args, {"subscribers": args.subscribers, "rows": rows, "ratio": ratio}
    )


if __name__ == "__main__":
    main()
