"""Fan-out: K websocket subscribers of one finished job all receive every byte, vs a bare broadcast.

Baseline, measured in the same run: a bare `websockets` server in its own process sending the same files
from memory in 256 KiB binary frames to the same K clients over loopback. The relay sends the journal
records and msgpack `chunk` frames of the same size (its chunk cache shares reads and encodings).

    python -m bench.relay_fanout                                  # 20 subscribers, 10 x 2 MB
    python -m bench.relay_fanout --subscribers 100 --items 100 --mb 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

import msgpack
import websockets

from bench._relay_stack import free_port, stack
from podstream import wire

CHUNK = 256 * 1024


async def relay_subscriber(url: str, job: str, expected: int) -> int:
    got = 0
    async with websockets.connect(url, compression=None, max_size=2**22) as ws:
        await ws.send(msgpack.packb({"t": "sub", "job": job, "from": 0}))
        async for raw in ws:
            frame = msgpack.unpackb(raw)  # type: ignore[arg-type]
            if frame["t"] == "chunk":
                got += len(frame["data"])
            elif frame["t"] == "ev" and frame["k"] == "done":
                break
    assert got == expected, (got, expected)
    return got


async def bare_subscriber(url: str, expected: int) -> int:
    got = 0
    async with websockets.connect(url, compression=None, max_size=2**22) as ws:
        async for raw in ws:
            got += len(raw)
    assert got == expected, (got, expected)
    return got


def load_chunks(directory: Path) -> list[bytes]:
    chunks: list[bytes] = []
    for path in sorted(directory.iterdir()):
        data = path.read_bytes()
        chunks.extend(data[i : i + CHUNK] for i in range(0, len(data), CHUNK))
    return chunks


async def serve_baseline(port: int, chunks: list[bytes]) -> None:
    """A bare broadcast, from memory (stricter than reading from disk as the relay does)."""

    async def handler(ws: websockets.ServerConnection) -> None:
        for chunk in chunks:
            await ws.send(chunk)

    async with websockets.serve(handler, "127.0.0.1", port, compression=None):
        await asyncio.Future()


async def measure(url_job: tuple[str, str] | None, url: str, k: int, expected: int) -> float:
    start = time.perf_counter()
    if url_job is not None:
        await asyncio.gather(*(relay_subscriber(url, url_job[1], expected) for _ in range(k)))
    else:
        await asyncio.gather(*(bare_subscriber(url, expected) for _ in range(k)))
    return time.perf_counter() - start


async def run(args: argparse.Namespace) -> None:
    blobs = [os.urandom(int(args.mb * 1_000_000)) for _ in range(args.items)]
    total = sum(len(b) for b in blobs)
    async with stack(fsync="never") as s:
        job = await s.run_job()
        await s.attach(job)
        assert await s.take() == job
        env = wire.Envelopes(job)
        for i, blob in enumerate(blobs):
            for envelope in env.parts(i, blob, mime="video/mp4"):
                await s.post(job, envelope)
        await s.done(job)
        await s.wait_done(job)
        media = next((s.data_dir / "jobs" / job / "media").iterdir())
        relay_s = await measure((s.ws_url, job), s.ws_url, args.subscribers, total)

        port = free_port()
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.relay_fanout", "--serve-baseline", str(port), str(media)
        )
        try:
            for _ in range(200):
                try:
                    _r, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            bare_s = await measure(None, f"ws://127.0.0.1:{port}", args.subscribers, total)
        finally:
            server.terminate()
            await server.wait()
    delivered = total * args.subscribers
    print(
        f"job: {args.items} x {args.mb} MB; {args.subscribers} subscribers; {delivered / 1e6:.0f} MB delivered each way"
    )
    print(f"bare websockets broadcast: {delivered / bare_s / 1e6:.0f} MB/s aggregate")
    print(f"relay fan-out:             {delivered / relay_s / 1e6:.0f} MB/s aggregate")
    print(f"ratio relay/bare: {bare_s / relay_s:.2f} (target >= 0.5)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=20)
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--mb", type=float, default=2.0)
    parser.add_argument("--serve-baseline", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        asyncio.run(serve_baseline(int(args.serve_baseline[0]), load_chunks(Path(args.serve_baseline[1]))))
        return
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
