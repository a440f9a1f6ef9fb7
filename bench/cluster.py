"""Cluster mode: ingest into Redis + S3 against local disk, fan-out from 2 replicas against 1, and
the time a survivor takes to poll a job after the polling replica is SIGKILLed, against the lease TTL.

    python -m bench.cluster                                    # 8 x 2 MB, 10 subscribers, 2 kills
    python -m bench.cluster --items 40 --mb 4 --subscribers 50 --kills 5

Needs `redis-server` and moto's S3 server (a dev dependency), both on loopback: moto is not S3, so the
ratios, not the seconds, are the point. Every ratio is measured side by side in this run:
- **ingest**: the same job (all its envelopes buffered at the emulator) attached by a local-disk relay
  (fsync always) and by one cluster replica (Redis with AOF, appendfsync always; items spooled, PUT and
  verified in the bucket), seconds from attach to the `done` record; ratio cluster/local MB/s;
- **fan-out**: N websocket subscribers (each verifying every item's sha256) of one finished job, all on one
  replica, then split over two; ratio of aggregate MB/s 2 replicas/1 replica (on a 2-core machine the
  replicas share the cores with the subscribers: the ratio says what a second replica costs or brings here);
- **takeover**: a scripted worker posts a long job; the replica holding its lease is SIGKILLed (a fresh
  replica started after each kill); seconds until another replica holds the lease, and until a survivor's
  journal grows again, as multiples of the lease TTL (target <= 2x).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import msgpack
import websockets

from bench import _results
from bench._cluster_stack import AWS_ENV, BUCKET, TOKEN_SECRET, ClusterStack, cluster_stack
from bench._relay_stack import stack
from podstream import wire
from podstream.emulator import Emulator, EmulatorConfig

POD = "bench-pod"


def job_envelopes(blobs: list[bytes]) -> list[dict[str, Any]]:
    env = wire.Envelopes("job")
    envelopes = [e for i, b in enumerate(blobs) for e in env.parts(i, b, mime="video/mp4", id=f"c{i}")]
    envelopes += env.manifest(
        wire.ManifestItem(i, f"c{i}", "ok", "video/mp4", len(b), wire.sha256_hex(b), wire.part_count(len(b), wire.DEFAULT_PART_BYTES))
        for i, b in enumerate(blobs)
    )  # fmt: skip
    return envelopes


# ------------------------------------------------------------------------------------------------ ingest


async def ingest(
    envelopes: list[dict[str, Any]], *relay_args: str, env: dict[str, str] | None = None
) -> float:
    """Seconds from attaching to a job whose envelopes are all buffered to its `done` record."""
    async with stack(*relay_args, fsync="always", env=env) as s:
        job = await s.run_job()
        assert await s.take() == job
        for envelope in envelopes:
            await s.post(job, {**envelope, "job": job})
        await s.done(job)
        start = time.perf_counter()
        await s.attach(job)
        done = await s.wait_done(job)
        seconds = time.perf_counter() - start
        assert done["errors"] == 0, done
        return seconds


async def ingest_cluster(envelopes: list[dict[str, Any]], work: Path) -> float:
    async with cluster_stack(work, "", aof=True) as cs:
        args = ("--redis-url", cs.redis.url, "--media-url", f"s3://{BUCKET}/relay",
                "--s3-endpoint-url", cs.s3.direct_url, "--replica-id", "ingest")  # fmt: skip
        return await ingest(envelopes, *args, env={**AWS_ENV, "PODSTREAM_TOKEN_SECRET": TOKEN_SECRET})


# --------------------------------------------------------------------------------------- scripted worker


async def _aiter(envelopes: Iterable[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for envelope in envelopes:
        yield envelope


class Worker:
    """Plays the worker on the emulator: take the job, post its envelopes (optionally paced), finish it."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.http = httpx.AsyncClient(timeout=30)

    async def run(self, envelopes: Iterable[dict[str, Any]] | AsyncIterator[dict[str, Any]]) -> str:
        base = self.emu.endpoint_url
        while True:
            r = await self.http.get(f"{base}/job-take/{POD}", params={"gpu": "CPU"})
            if r.status_code == 200:
                job: str = r.json()["id"]
                break
        if not isinstance(envelopes, AsyncIterator):
            envelopes = _aiter(envelopes)
        async for envelope in envelopes:
            r = await self.http.post(
                f"{base}/job-stream/{POD}/{job}", params={"gpu": "CPU", "isStream": "false"},
                json={"output": {**envelope, "job": job}},
            )  # fmt: skip
            r.raise_for_status()
        r = await self.http.post(f"{base}/job-done/{POD}/{job}", params={"gpu": "CPU"}, json={"output": []})
        r.raise_for_status()
        return job

    async def run_until(self, stop: asyncio.Event, pace_s: float, size: int = 20_000) -> str:
        """Post one small item every `pace_s` until `stop` is set, then the manifest: a job as long as needed."""
        blobs: list[bytes] = []
        envelopes = wire.Envelopes("job")

        async def items() -> AsyncIterator[dict[str, Any]]:
            while not stop.is_set():
                blobs.append(os.urandom(size))
                for envelope in envelopes.parts(
                    len(blobs) - 1, blobs[-1], mime="video/mp4", id=f"c{len(blobs)}"
                ):
                    yield envelope
                await asyncio.sleep(pace_s)
            entries = [
                wire.ManifestItem(i, f"c{i + 1}", "ok", "video/mp4", len(b), wire.sha256_hex(b), wire.part_count(len(b), wire.DEFAULT_PART_BYTES))
                for i, b in enumerate(blobs)
            ]  # fmt: skip
            for envelope in envelopes.manifest(entries):
                yield envelope

        return await self.run(items())

    async def close(self) -> None:
        await self.http.aclose()


async def submit(cs: ClusterStack) -> str:
    async with httpx.AsyncClient(headers=cs.headers, timeout=30) as http:
        r = await http.post(f"{cs.live[0].url}/v1/jobs", json={"input": {}})
        r.raise_for_status()
        job: str = r.json()["id"]
        return job


async def wait_done(cs: ClusterStack, job: str, seconds: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(headers=cs.headers, timeout=30) as http:
        while time.monotonic() < deadline:
            try:
                body: dict[str, Any] = (await http.get(f"{cs.live[0].url}/v1/jobs/{job}")).json()
                if body.get("finished"):
                    return body
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"job {job} did not finish in {seconds} s\n{cs.logs()}")


# ----------------------------------------------------------------------------------------------- fan-out


async def subscriber(url: str, headers: dict[str, str], job: str, expected: dict[int, str]) -> int:
    """Follow a finished job to `done`, verifying every item's sha256; returns the bytes received."""
    digests: dict[int, Any] = {}
    received = 0
    async with websockets.connect(url, additional_headers=headers, compression=None, max_size=2**22) as ws:
        assert msgpack.unpackb(await ws.recv())["t"] == "welcome"  # type: ignore[arg-type]
        await ws.send(msgpack.packb({"t": "sub", "job": job, "from": 0}))
        async for raw in ws:
            frame = msgpack.unpackb(raw)  # type: ignore[arg-type]
            if frame["t"] == "chunk":
                digests[frame["item"]].update(frame["data"])
                received += len(frame["data"])
                if frame["last"] and digests[frame["item"]].hexdigest() != expected[frame["item"]]:
                    raise RuntimeError(f"item {frame['item']}: sha256 mismatch")
            elif frame["t"] == "ev" and frame["k"] == "item":
                digests[frame["item"]] = hashlib.sha256()
            elif frame["t"] == "ev" and frame["k"] == "done":
                break
            elif frame["t"] in ("err", "bye"):
                raise RuntimeError(f"the relay said {frame}")
    if len(digests) != len(expected):
        raise RuntimeError(f"{len(digests)} of {len(expected)} items received")
    return received


async def fanout(blobs: list[bytes], subscribers: int, work: Path) -> dict[str, float]:
    expected = {i: hashlib.sha256(b).hexdigest() for i, b in enumerate(blobs)}
    config = EmulatorConfig(max_stream_item_bytes=1_000_000, job_take_wait_s=2.0, heartbeat_grace_s=3600.0)
    async with (
        Emulator(config).serve(host="127.0.0.1", port=0) as emu,
        cluster_stack(work, emu.endpoint_url) as cs,
    ):
        await asyncio.gather(cs.start_replica(), cs.start_replica())
        worker = Worker(emu)
        try:
            job = await submit(cs)
            await worker.run(job_envelopes(blobs))
        finally:
            await worker.close()
        await wait_done(cs, job)
        # one subscriber per replica first: each replica's first reads of the job (HEAD, its chunk
        # cache) are not what fan-out measures
        await asyncio.gather(*(subscriber(r.ws_url, cs.headers, job, expected) for r in cs.live))
        rates: dict[int, list[float]] = {1: [], 2: []}
        for replicas in (1, 2, 1, 2):  # alternated: a drift of the machine's load hits both alike
            urls = [cs.live[k % replicas].ws_url for k in range(subscribers)]
            start = time.perf_counter()
            sent = await asyncio.gather(*(subscriber(u, cs.headers, job, expected) for u in urls))
            rates[replicas].append(sum(sent) / (time.perf_counter() - start) / 1e6)
        return {f"replicas_{n}_mb_s": statistics.mean(r) for n, r in rates.items()}


# ---------------------------------------------------------------------------------------------- takeover


async def journal_length(http: httpx.AsyncClient, url: str, job: str, after: int = 0) -> int:
    """The replica's published journal head. Asking for the records after `after` (the last head seen)
    keeps each probe small: a probe from 0 every 10 ms made the survivor encode the whole journal each
    time, so the measured regrowth grew with the job, and the events cap could hide the head."""
    params: dict[str, str | int] = {"format": "json", "after": after}
    return int((await http.get(f"{url}/v1/jobs/{job}/events", params=params)).json()["head"])


async def poll(
    check: Callable[[], Awaitable[bool]], interval: float, cs: ClusterStack, limit: float = 120
) -> None:
    deadline = time.monotonic() + limit
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no takeover within {limit} s\n{cs.logs()}")
        await asyncio.sleep(interval)


async def takeover(kills: int, ttl: float, work: Path) -> dict[str, Any]:
    """Seconds from each SIGKILL of the polling replica to another holding the lease / journaling again."""
    config = EmulatorConfig(max_stream_item_bytes=1_000_000, job_take_wait_s=2.0, heartbeat_grace_s=3600.0)
    stop = asyncio.Event()  # the worker posts small items, paced, until every kill is measured
    async with (
        Emulator(config).serve(host="127.0.0.1", port=0) as emu,
        # No gap recovery: the scripted worker keeps no output cache, so a resend job would never be
        # answered and the run would idle out RECOVERY_TIMEOUT_S (300 s) before `done`.
        cluster_stack(
            work, emu.endpoint_url, lease_ttl_s=ttl, env={"PODSTREAM_RECOVERY_ATTEMPTS": "0"}
        ) as cs,
    ):
        await asyncio.gather(cs.start_replica(), cs.start_replica())
        worker = Worker(emu)
        try:
            job = await submit(cs)
            posting = asyncio.create_task(worker.run_until(stop, pace_s=0.02))
            lease_s: list[float] = []
            journal_s: list[float] = []
            async with httpx.AsyncClient(headers=cs.headers, timeout=30) as http:
                for _ in range(kills):
                    await asyncio.sleep(2 * ttl)  # the poller settled, records flowing
                    holder = cs.poller(job)
                    if holder is None or posting.done():
                        raise RuntimeError(f"no poller mid-job (holder {holder})\n{cs.logs()}")
                    victim = cs.replica(holder)
                    survivor = next(r for r in cs.live if r is not victim)
                    await victim.kill()
                    killed = time.perf_counter()
                    before = await journal_length(http, survivor.url, job)

                    async def taken(holder: str = holder) -> bool:
                        return cs.poller(job) not in (None, holder)

                    async def grown(url: str = survivor.url, before: int = before) -> bool:
                        return await journal_length(http, url, job, before) > before

                    await poll(taken, 0.005, cs)
                    now = cs.poller(job)
                    lease_s.append(time.perf_counter() - killed)
                    await poll(grown, 0.01, cs)
                    journal_s.append(time.perf_counter() - killed)
                    print(f"  killed {holder}: {now} polled after {lease_s[-1]:.2f} s, "
                              f"journaled after {journal_s[-1]:.2f} s")  # fmt: skip
                    await cs.start_replica()
            stop.set()
            await posting
        finally:
            await worker.close()
        done = await wait_done(cs, job)
    return {
        "ttl_s": ttl, "lease_s": lease_s, "journal_s": journal_s,
        "lease_ratio_max": max(lease_s) / ttl, "journal_ratio_max": max(journal_s) / ttl,
        "lease_ratio_median": statistics.median(lease_s) / ttl, "errors": len(done.get("errors", [])),
        "error_codes": sorted({e["code"] for e in done.get("errors", [])}),
    }  # fmt: skip


def report_section(d: dict[str, Any]) -> list[str]:
    """docs/benchmarks.md's section for these figures (bench._report calls it)."""
    t = d["takeover"]
    return [
        "## Cluster mode",
        "",
        "Relay replicas on Redis (AOF, appendfsync always) and moto's S3 server, on this machine: moto is "
        "not S3 and both share the cores, so read the ratios. `bench/cluster.py` says how each is measured.",
        "",
        "| figure | local disk or 1 replica | cluster or 2 replicas | ratio |",
        "| --- | --- | --- | --- |",
        f"| ingest, {d['mb']:.0f} MB buffered job, MB/s | {d['local_mb_s']:.0f} | {d['cluster_mb_s']:.0f} "
        f"| {d['ingest_ratio']:.2f} |",
        f"| fan-out to {d['args']['subscribers']} subscribers, aggregate MB/s | "
        f"{d['fanout']['replicas_1_mb_s']:.0f} | {d['fanout']['replicas_2_mb_s']:.0f} | {d['fanout_ratio']:.2f} |",
        "",
        f"Takeover after SIGKILL of the polling replica, lease TTL {t['ttl_s']:g} s, {len(t['lease_s'])} kills: "
        f"another replica held the lease after {', '.join(f'{s:.2f}' for s in t['lease_s'])} s "
        f"(at most **{t['lease_ratio_max']:.2f}x the TTL**, target <= 2x) and journaled again after "
        f"{', '.join(f'{s:.2f}' for s in t['journal_s'])} s (at most {t['journal_ratio_max']:.2f}x). The "
        f"scripted worker keeps no output cache, so what a killed replica drained and never wrote cannot be "
        f"resent; gap recovery is off in this run (`RECOVERY_ATTEMPTS=0`: a resend job nobody answers would "
        f"only wait out its timeout): the job ended with {t['errors']} error record(s) "
        f"({', '.join(t['error_codes']) or 'none'}).",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--mb", type=float, default=2.0, help="size of each item in MB")
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--ttl", type=float, default=2.0, help="the lease TTL of the takeover runs (s)")
    _results.add_json_option(parser)
    args = parser.parse_args()
    for name, value in AWS_ENV.items():
        os.environ.setdefault(name, value)
    blobs = [os.urandom(int(args.mb * 1_000_000)) for _ in range(args.items)]
    total = sum(len(b) for b in blobs)
    envelopes = job_envelopes(blobs)
    with tempfile.TemporaryDirectory(prefix="podstream-bench-cluster-") as tmp:
        local_s = asyncio.run(ingest(envelopes))
        cluster_s = asyncio.run(ingest_cluster(envelopes, Path(tmp) / "ingest"))
        fan = asyncio.run(fanout(blobs, args.subscribers, Path(tmp) / "fanout"))
        print(f"takeover, lease TTL {args.ttl:g} s:")
        take = asyncio.run(takeover(args.kills, args.ttl, Path(tmp) / "takeover"))
    figures = {
        "mb": total / 1e6, "local_mb_s": total / local_s / 1e6, "cluster_mb_s": total / cluster_s / 1e6,
        "ingest_ratio": local_s / cluster_s, "fanout": fan,
        "fanout_ratio": fan["replicas_2_mb_s"] / max(fan["replicas_1_mb_s"], 1e-9), "takeover": take,
    }  # fmt: skip
    print(f"job: {args.items} items x {args.mb:g} MB = {total / 1e6:.0f} MB")
    print(f"ingest, local disk (fsync always):            {figures['local_mb_s']:.0f} MB/s")
    print(f"ingest, Redis (AOF always) + S3 (moto):       {figures['cluster_mb_s']:.0f} MB/s")
    print(f"ratio cluster/local: {figures['ingest_ratio']:.2f}")
    print(f"fan-out to {args.subscribers} subscribers: 1 replica {fan['replicas_1_mb_s']:.0f} MB/s, "
          f"2 replicas {fan['replicas_2_mb_s']:.0f} MB/s: ratio {figures['fanout_ratio']:.2f}")  # fmt: skip
    print(f"takeover: lease after at most {take['lease_ratio_max']:.2f}x the TTL (target <= 2x), "
          f"journal growing again after at most {take['journal_ratio_max']:.2f}x")  # fmt: skip
    _results.write(args.json, "cluster", args, figures)


if __name__ == "__main__":
    main()
