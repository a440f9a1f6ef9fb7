"""Fan-out: K websocket subscribers of one finished job all receive (and verify) every byte, vs a bare broadcast.

Baseline, measured in the same run: a bare `websockets` server in its own process sending the same files
from memory in 256 KiB binary frames to the same K clients over loopback. The relay sends the journal
records and msgpack `chunk` frames of the same size (its chunk cache shares reads and encodings: the hits
are reported). Both kinds of client sha256 what they receive. The clients run in a pool of processes
(`--client-procs`, default one per core), so one client process at a full core does not cap the
throughput of either server; their CPU use is reported, to show whether they still did.

Runs alternate, relay then bare, `--reps` times at each K (A B A B A B): both see the same machine load.
Server CPU per GB delivered is each server process's own CPU time (user + system) over the bytes delivered;
each ratio is relay / bare of one pair of runs, given as min-max over the pairs. Fairness is Jain's index of
the subscribers' throughputs (1.0: all equal), the lowest over the runs.

    python -m bench.relay_fanout                                           # 20 subscribers, 10 x 2 MB
    python -m bench.relay_fanout --subscribers 20,50,100 --items 100 --mb 4
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import hashlib
import multiprocessing
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
#: Every client process starts connecting at the same moment, this long after the run is handed out.
START_DELAY_S = 0.5


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
    return time.monotonic() - started


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
    return time.monotonic() - started


@dataclass(frozen=True)
class Clients:
    """What one client process runs: `n` subscribers of one kind, all starting at `start` (the monotonic
    clock is system-wide on Linux, so every process measures from the same instant)."""

    kind: str  # "relay" or "bare"
    url: str
    n: int
    start: float
    passes: int = 1  # each subscriber reads the whole job this many times, one connection after another
    job: str = ""
    expected: tuple[tuple[int, str], ...] = ()
    total: int = 0
    digest: str = ""


def run_clients(clients: Clients) -> tuple[list[float], float]:
    """In a client process: the subscribers' seconds, and this process's CPU seconds for them."""
    cpu0 = time.process_time()

    async def main() -> list[float]:
        await asyncio.sleep(max(0.0, clients.start - time.monotonic()))
        expected = dict(clients.expected)

        async def subscriber() -> float:
            seconds = 0.0
            for _ in range(clients.passes):
                if clients.kind == "relay":
                    seconds = await relay_subscriber(clients.url, clients.job, expected, clients.start)
                else:
                    seconds = await bare_subscriber(clients.url, clients.total, clients.digest, clients.start)
            return seconds

        subs = [subscriber() for _ in range(clients.n)]
        return list(await asyncio.wait_for(asyncio.gather(*subs), TIMEOUT_S))

    seconds = asyncio.run(main())
    return seconds, time.process_time() - cpu0


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
    client_cpu: float  # the client processes' CPU over (seconds x processes): 1.0 = every one saturated


def cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def measure(
    process: psutil.Process, pool: concurrent.futures.ProcessPoolExecutor, procs: int, k: int, **kw: Any
) -> Run:
    """One run: `k` subscribers spread over `procs` client processes, against the server `process`
    (`kw`: the rest of `Clients`)."""
    loop = asyncio.get_running_loop()
    start = time.monotonic() + START_DELAY_S
    shares = [n for n in (k // procs + (1 if i < k % procs else 0) for i in range(procs)) if n]
    before = cpu(process)
    batches = [loop.run_in_executor(pool, run_clients, Clients(n=n, start=start, **kw)) for n in shares]
    done = await asyncio.wait_for(asyncio.gather(*batches), TIMEOUT_S)
    seconds = time.monotonic() - start
    used = cpu(process) - before
    each = [t for times, _cpu in done for t in times]
    client_cpu = sum(c for _times, c in done) / (seconds * len(shares))
    return Run(seconds, used, _results.jain([1 / t for t in each]), client_cpu)


async def cache_counts(http: httpx.AsyncClient, relay_url: str) -> tuple[float, float]:
    text = (await http.get(f"{relay_url}/metrics")).text
    values = {}
    for line in text.splitlines():
        for name in ("hits", "misses"):
            if line.startswith(f"podstream_relay_chunk_cache_{name}_total "):
                values[name] = float(line.split()[1])
    return values.get("hits", 0.0), values.get("misses", 0.0)


def row(
    k: int, total: int, passes: int, pairs: list[tuple[Run, Run]], hits: float, misses: float
) -> dict[str, Any]:
    """The figures of one K: per pair of runs (relay, bare), and their min-max."""
    gb = total * k * passes / 1e9
    ratios = [bare.seconds / relay.seconds for relay, bare in pairs]
    cpu_ratios = [relay.cpu_s / max(bare.cpu_s, 1e-9) for relay, bare in pairs]
    return {
        "subscribers": k,
        "passes": passes,
        "gb_per_run": gb,
        "relay_mb_s": max(gb * 1e3 / relay.seconds for relay, _ in pairs),
        "bare_mb_s": max(gb * 1e3 / bare.seconds for _, bare in pairs),
        "ratios": ratios,
        "ratio": sorted(ratios)[len(ratios) // 2],
        "cpu_ratios": cpu_ratios,
        "cpu_ratio": sorted(cpu_ratios)[len(cpu_ratios) // 2],
        "relay_cpu_s": [relay.cpu_s for relay, _ in pairs],
        "bare_cpu_s": [bare.cpu_s for _, bare in pairs],
        "relay_cpu_s_per_gb": min(relay.cpu_s for relay, _ in pairs) / gb,
        "bare_cpu_s_per_gb": min(bare.cpu_s for _, bare in pairs) / gb,
        "relay_fairness": min(relay.fairness for relay, _ in pairs),
        "bare_fairness": min(bare.fairness for _, bare in pairs),
        "relay_client_cpu": max(relay.client_cpu for relay, _ in pairs),
        "bare_client_cpu": max(bare.client_cpu for _, bare in pairs),
        "cache_hits": hits,
        "cache_misses": misses,
        "hit_rate": hits / max(hits + misses, 1),
    }


def span(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    counts = [int(k) for k in args.subscribers.split(",")]
    procs = args.client_procs or max(2, os.cpu_count() or 1)
    rows: list[dict[str, Any]] = []
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(procs, mp_context=context) as pool:
        async with stack(fsync="never") as s:
            job = await s.run_job()
            await s.attach(job)
            assert await s.take() == job
            env = wire.Envelopes(job)
            manifest, expected, whole = [], {}, hashlib.sha256()
            for i in range(args.items):
                blob = os.urandom(int(args.mb * 1_000_000))
                expected[i] = wire.sha256_hex(blob)
                whole.update(blob)
                parts = list(env.parts(i, blob, mime="video/mp4"))
                for envelope in parts:
                    await s.post(job, envelope)
                manifest.append(
                    wire.ManifestItem(i, "", "ok", "video/mp4", len(blob), expected[i], len(parts))
                )
            total = int(args.mb * 1_000_000) * args.items
            # The manifest ends the job, as a real worker's does: without it the relay reports missing_manifest.
            for envelope in env.manifest(manifest):
                await s.post(job, envelope)
            await s.done(job)
            done = await asyncio.wait_for(s.wait_done(job), 600)
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
                relay_kw = {"kind": "relay", "url": s.ws_url, "job": job, "expected": tuple(expected.items())}
                bare_kw = {"kind": "bare", "url": f"ws://127.0.0.1:{port}", "total": total}
                bare_kw["digest"] = whole.hexdigest()
                # Warm-up, unmeasured: the client processes start, the baseline loads, the relay's first
                # verification of each file (a sha256 of every item, once per process) is not in a row.
                await measure(relay_process, pool, procs, min(counts[0], procs), **relay_kw)
                await measure(bare_process, pool, procs, min(counts[0], procs), **bare_kw)
                for k in counts:
                    # Enough passes over the job that each run delivers about `--gb` (CPU totals of
                    # seconds, well above the kernel's 10 ms accounting step).
                    passes = max(1, round(args.gb * 1e9 / (total * k)))
                    pairs: list[tuple[Run, Run]] = []
                    hits0, misses0 = await cache_counts(s.http, s.relay_url)
                    for _rep in range(args.reps):  # interleaved: relay, bare, relay, bare, ...
                        relay = await measure(relay_process, pool, procs, k, passes=passes, **relay_kw)
                        bare = await measure(bare_process, pool, procs, k, passes=passes, **bare_kw)
                        pairs.append((relay, bare))
                    hits1, misses1 = await cache_counts(s.http, s.relay_url)
                    rows.append(row(k, total, passes, pairs, hits1 - hits0, misses1 - misses0))
            finally:
                server.terminate()
                await server.wait()
    print(
        f"job: {args.items} x {args.mb:g} MB = {total / 1e6:.0f} MB, every item sha256-verified by every "
        f"subscriber; {args.reps} pairs of runs per K, clients in {procs} processes, about {args.gb:g} GB a run"
    )
    print(
        " K | relay/bare throughput | CPU relay/bare | CPU s relay, bare | Jain relay, bare | "
        "client CPU relay, bare | cache hit rate"
    )
    for r in rows:
        print(
            f"{r['subscribers']:3d} | {span(r['ratios']):>21} | {span(r['cpu_ratios']):>14} | "
            f"{min(r['relay_cpu_s']):.1f}, {min(r['bare_cpu_s']):.1f} | "
            f"{r['relay_fairness']:.3f}, {r['bare_fairness']:.3f} | "
            f"{r['relay_client_cpu']:.2f}, {r['bare_client_cpu']:.2f} | "
            f"{r['hit_rate']:.3f} ({r['cache_hits']:.0f} hits, {r['cache_misses']:.0f} reads)"
        )
    print(f"targets: relay/bare >= {TARGET_THROUGHPUT}, CPU ratio <= {TARGET_CPU}, Jain >= {TARGET_JAIN}")
    return {"job_mb": total / 1e6, "client_procs": procs, "reps": args.reps, "rows": rows}


#: The targets the page marks as met or missed.
TARGET_THROUGHPUT = 0.95
TARGET_CPU = 1.1
TARGET_JAIN = 0.99


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", default="20", help="comma-separated subscriber counts")
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--mb", type=float, default=2.0)
    parser.add_argument("--reps", type=int, default=3, help="pairs of runs (relay, bare) per K")
    parser.add_argument(
        "--gb",
        type=float,
        default=4.0,
        help="GB each run delivers (subscribers read the job again to reach it)",
    )
    parser.add_argument(
        "--client-procs", type=int, default=0, help="client processes (default: one per core, at least 2)"
    )
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
