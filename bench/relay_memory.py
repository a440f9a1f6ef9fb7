"""Relay memory: peak RSS while a job streams live through it to K subscribers, big job vs small job.

The worker (scripted, posting to the emulator) streams the job while K websocket subscribers follow it live;
the relay process's RSS is sampled throughout. Memory must be bounded by configuration, not by job size or
subscriber count: the big job's peak should be within 20% of the small job's (and under 200 MB).

    python -m bench.relay_memory                          # 200 MB vs 20 MB, 10 subscribers
    python -m bench.relay_memory --mb 2000 --subscribers 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os

import msgpack
import psutil
import websockets

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
            elif frame["t"] == "ev" and frame["k"] == "done":
                return got
    return got


async def peak_rss(total_mb: float, subscribers: int) -> tuple[float, float]:
    items = max(1, round(total_mb / ITEM_MB))
    blob = os.urandom(ITEM_MB * 1_000_000)
    async with stack() as s:
        process = psutil.Process(s.process.pid)
        idle = process.memory_info().rss
        peak = idle
        job = await s.run_job()
        await s.attach(job)
        assert await s.take() == job
        followers = [asyncio.ensure_future(follow(s.ws_url, job)) for _ in range(subscribers)]
        stop = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, process.memory_info().rss)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)

        sampler = asyncio.ensure_future(sample())
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
        stop.set()
        await sampler
        assert all(r == items * len(blob) for r in received), received
        return idle / 2**20, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=float, default=200.0, help="size of the big job in MB")
    parser.add_argument("--subscribers", type=int, default=10)
    args = parser.parse_args()
    small_idle, small = asyncio.run(peak_rss(args.mb / 10, args.subscribers))
    _big_idle, big = asyncio.run(peak_rss(args.mb, args.subscribers))
    print(f"relay RSS idle: {small_idle:.0f} MB")
    print(f"peak RSS, {args.mb / 10:.0f} MB job to {args.subscribers} subscribers: {small:.0f} MB")
    print(
        f"peak RSS, {args.mb:.0f} MB job to {args.subscribers} subscribers: {big:.0f} MB (target <= 200 MB)"
    )
    print(f"ratio big/small: {big / small:.2f} (target <= 1.20)")


if __name__ == "__main__":
    main()
