"""Fan-out: K websocket subscribers of one finished job all receive (and verify) every byte, vs a bare broadcast.

Baseline, measured in the same run: a bare `websockets` server in its own process sending the same files
from memory in 256 KiB binary frames to the same K clients over loopback. The relay sends the journal
records and msgpack `chunk` frames of the same size (its chunk cache shares reads and encodings: the hits
are reported). Both kinds of client sha256 what they receive. Server CPU per GB delivered is each server
process's own CPU time (user + system) over the bytes delivered. Fairness is Jain's index of the
subscribers' throughputs (1.0: all equal).

    python -m bench.relay_fanout                                           # 5, 10, 20 subscribers, 8 x 1 MB
    python -m bench.relay_fanout --subscribers 20,50,100 --items 100 --mb 4
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgpack
import psutil
import websockets

from bench import _results
from bench._relay_stack import free_port, stack
from podstream import wire

CHUNK = 256 * 1024
#: A run that takes longer than this has hung (a relay waiting on something that will not come).
TIMEOUT_S = 1800.0


class RelayError(RuntimeError):
    """The relay said something went wrong (an `err` or `bye` frame): the run's figures are void."""


async def relay_subscriber(url: str, job: str, expected: dict[int, str], started: float) -> float:
    """Follow `job` to its `done` record; verify every item's sha256. Returns this subscriber's seconds."""
    items: dict[int, Any] = {}
    verified = 0
    async with websockets.connect(url, compression=None, max_size=2**22) as ws:
        await ws.send(msgpack.packb({"t": "sub", "job": job, "from": 0}))
        async for raw in ws:
            frame = msgpack.unpackb(raw)  # type: ignore[arg-type]
            t = frame["t"]
            if t == "chunk":
                items[frame["item"]].update(frame["data"])
                if frame["last"]:
                    if items[frame["item"]].hexdigest() != expected[frame["item"]]:
                        raise RelayError(f"item {frame['item']}: sha256 mismatch")
                    verified += 1
            elif t == "ev" and frame["k"] == "item":
                items[frame["item"]] = hashlib.sha256()
            elif t == "ev" and frame["k"] == "error":
                raise RelayError(f"error record {frame.get('code')}: {frame.get('message')}")
            elif t == "ev" and frame["k"] == "done":
                break
            elif t == "ping":
                await ws.send(msgpack.packb({"t": "pong", "n": frame["n"]}))
            elif t in ("err", "bye"):
                raise RelayError(f"{t} {frame.get('code')}: {frame.get('message')}")
    if verified != len(expected):
        raise RelayError(f"{verified} of {len(expected)} items verified")
    return time.perf_counter() - started


async def bare_subscriber(url: str, expected: int, digest: str, started: float) -> float:
    got = 0
    h = hashlib.sha256()
    async with websockets.connect(url, compression=None, max_size=2**22) as ws:
        async for raw in ws:
            assert isinstance(raw, bytes)
            h.update(raw)
            got += len(raw)
    if got != expected or h.hexdigest() != digest:
        raise RuntimeError(f"bare broadcast: {got} of {expected} bytes, or a sha256 mismatch")
    return time.perf_counter() - started


def load_chunks(directory: Path) -> list[bytes]:
    chunks: list[bytes] = []
    for path in sorted(directory.iterdir(), key=lambda p: int(p.name.split(".")[0])):
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


@dataclass
class Run:
    seconds: float
    cpu_s: float
    fairness: float


def cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def measure(process: psutil.Process, subscribers: list[Any]) -> Run:
    before = cpu(process)
    started = time.perf_counter()
    each = await asyncio.wait_for(asyncio.gather(*(s(started) for s in subscribers)), TIMEOUT_S)
    seconds = time.perf_counter() - started
    return Run(seconds, cpu(process) - before, _results.jain([1 / t for t in each]))


async def cache_counts(http: httpx.AsyncClient, relay_url: str) -> tuple[float, float]:
    text = (await http.get(f"{relay_url}/metrics")).text
    values = {}
    for line in text.splitlines():
        for name in ("hits", "misses"):
            if line.startswith(f"podstream_relay_chunk_cache_{name}_total "):
                values[name] = float(line.split()[1])
    return values.get("hits", 0.0), values.get("misses", 0.0)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = [int(k) for k in args.subscribers.split(",")]
    blobs = [os.urandom(int(args.mb * 1_000_000)) for _ in range(args.items)]
    total = sum(len(b) for b in blobs)
    expected = {i: wire.sha256_hex(b) for i, b in enumerate(blobs)}
    digest = hashlib.sha256(b"".join(blobs)).hexdigest()
    rows: list[dict[str, Any]] = []
    async with stack(fsync="never") as s:
        job = await s.run_job()
        await s.attach(job)
        assert await s.take() == job
        env = wire.Envelopes(job)
        manifest = []
        for i, blob in enumerate(blobs):
            parts = list(env.parts(i, blob, mime="video/mp4"))
            for envelope in parts:
                await s.post(job, envelope)
            manifest.append(wire.ManifestItem(i, "", "ok", "video/mp4", len(blob), expected[i], len(parts)))
        # The manifest ends the job, as a real worker's does: without it the relay reports missing_manifest.
        for envelope in env.manifest(manifest):
            await s.post(job, envelope)
        await s.done(job)
        done = await asyncio.wait_for(s.wait_done(job), 120)
        if done.get("errors") or done.get("items") != args.items:
            raise RelayError(f"the job did not end cleanly: {done}")
        media = next((s.data_dir / "jobs" / job / "media").iterdir())
        relay_process = psutil.Process(s.process.pid)

        port = free_port()
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.relay_fanout", "--serve-baseline", str(port), str(media)
        )
        try:
            for _ in range(400):
                try:
                    _r, w = await asyncio.open_connection("127.0.0.1", port)
                    w.close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            bare_process = psutil.Process(server.pid)
            bare_url = f"ws://127.0.0.1:{port}"
            for k in counts:  # side by side: the relay, then the bare broadcast, at each K
                hits0, misses0 = await cache_counts(s.http, s.relay_url)
                relay = await measure(
                    relay_process,
                    [lambda t: relay_subscriber(s.ws_url, job, expected, t) for _ in range(k)],
                )
                hits1, misses1 = await cache_counts(s.http, s.relay_url)
                bare = await measure(
                    bare_process, [lambda t: bare_subscriber(bare_url, total, digest, t) for _ in range(k)]
                )
                gb = total * k / 1e9
                hits, misses = hits1 - hits0, misses1 - misses0
                rows.append(
                    {
                        "subscribers": k,
                        "relay_mb_s": total * k / relay.seconds / 1e6,
                        "bare_mb_s": total * k / bare.seconds / 1e6,
                        "ratio": bare.seconds / relay.seconds,
                        "relay_cpu_s_per_gb": relay.cpu_s / gb,
                        "bare_cpu_s_per_gb": bare.cpu_s / gb,
                        "cpu_ratio": relay.cpu_s / max(bare.cpu_s, 1e-9),
                        "relay_fairness": relay.fairness,
                        "bare_fairness": bare.fairness,
                        "cache_hits": hits,
                        "cache_misses": misses,
                        "hit_rate": hits / max(hits + misses, 1),
                    }
                )
        finally:
            server.terminate()
            await server.wait()
    print(
        f"job: {args.items} x {args.mb:g} MB = {total / 1e6:.0f} MB, every item sha256-verified by every subscriber"
    )
    print(
        " K | relay MB/s | bare MB/s | relay/bare | CPU s/GB relay, bare (ratio) | Jain relay, bare | cache hit rate"
    )
    for r in rows:
        print(
            f"{r['subscribers']:3d} | {r['relay_mb_s']:10.0f} | {r['bare_mb_s']:9.0f} | {r['ratio']:10.2f} | "
            f"{r['relay_cpu_s_per_gb']:.2f}, {r['bare_cpu_s_per_gb']:.2f} ({r['cpu_ratio']:.2f}) | "
            f"{r['relay_fairness']:.3f}, {r['bare_fairness']:.3f} | "
            f"{r['hit_rate']:.3f} ({r['cache_hits']:.0f} hits, {r['cache_misses']:.0f} reads)"
        )
    print("targets: relay/bare >= 0.8, CPU ratio <= 2, Jain >= 0.99")
    return {"job_mb": total / 1e6, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", default="20", help="comma-separated subscriber counts")
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--mb", type=float, default=2.0)
    parser.add_argument("--serve-baseline", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    _results.add_json_option(parser)
    args = parser.parse_args()
    if args.serve_baseline:
        asyncio.run(serve_baseline(int(args.serve_baseline[0]), load_chunks(Path(args.serve_baseline[1]))))
        return
    try:
        figures = asyncio.run(run(args))
    except (RelayError, TimeoutError) as exc:
        print(f"relay_fanout FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc
    _results.write(args.json, "relay_fanout", args, figures)


if __name__ == "__main__":
    main()
