"""Harness of the replica failure tests: relay replicas in cluster mode (bench._cluster_stack: redis-server,
moto behind a cuttable proxy, `podstream relay` processes), the RunPod emulator with real worker processes
(tests.relay.file_worker, sharing one output cache so a resend job finds what a dead replica drained), and
subscribers that follow a job across replicas.

A `Follower` is a websocket subscriber that resumes from its last applied seq on whichever replica is alive
next, whenever its connection ends (its replica killed, a `bye`, or on purpose every `hop_every` records).
It counts what a subscriber must never see: a seq twice, a seq skipped, an item whose bytes do not match.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
import websockets

from bench._cluster_stack import ClusterStack, cluster_stack
from podstream.emulator import Emulator, EmulatorConfig
from tests.relay.file_worker import file_bytes

ROOT = Path(__file__).resolve().parents[4]
WORKER = [sys.executable, "-m", "tests.relay.file_worker"]
RUNPOD_KEY = "runpod-test-key"
PART_BYTES = 1024


def sizes(n: int) -> list[int]:
    """Item sizes of an n-item job: 1-3 parts each (small: the tests are about who writes, not bytes)."""
    return [1000 + (k * 337) % 2000 for k in range(n)]


def video_job(item_sizes: list[int]) -> dict[str, Any]:
    items = [{"prompt": str(size), "id": f"clip{i}"} for i, size in enumerate(item_sizes)]
    return {"input": {"task": "text-to-video", "items": items, "output": {"part_bytes": PART_BYTES}}}


@dataclass
class Replicas:
    stack: ClusterStack
    emu: Emulator
    work: Path

    @property
    def headers(self) -> dict[str, str]:
        return self.stack.headers

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers=self.headers, timeout=10)

    async def submit(self, item_sizes: list[int]) -> str:
        async with self.http() as http:
            r = await http.post(f"{self.stack.live[0].url}/v1/jobs", json=video_job(item_sizes))
            assert r.status_code == 201, r.text
            job: str = r.json()["id"]
            return job

    async def wait_poller(self, job: str, seconds: float = 30, not_: str | None = None) -> str:
        """The live replica holding the job's lease (other than `not_`), once one does."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            holder = self.stack.poller(job)
            if holder is not None and holder != not_ and self.stack.replica(holder).alive:
                return holder
            await asyncio.sleep(0.02)
        raise AssertionError(f"no live replica took the lease of {job} in {seconds} s\n{self.logs()}")

    async def finished(self, job: str, seconds: float = 90) -> dict[str, Any]:
        """The job's manifest (GET /v1/jobs/{id}) once finished, from any live replica."""
        deadline = time.monotonic() + seconds
        body: dict[str, Any] = {}
        async with self.http() as http:
            while time.monotonic() < deadline:
                for replica in self.stack.live:
                    with contextlib.suppress(httpx.TransportError, ValueError):
                        r = await http.get(f"{replica.url}/v1/jobs/{job}")
                        if r.status_code == 200:
                            body = r.json()
                            if body.get("finished"):
                                return body
                        break
                await asyncio.sleep(0.2)
        raise AssertionError(f"job {job} did not finish in {seconds} s: {body}\n{self.logs()}")

    async def readyz(self) -> dict[str, int]:
        """Each live replica's /readyz status (0: no answer)."""
        answers: dict[str, int] = {}
        async with httpx.AsyncClient(timeout=3) as http:
            for replica in self.stack.live:
                try:
                    answers[replica.name] = (await http.get(f"{replica.url}/readyz")).status_code
                except httpx.TransportError:
                    answers[replica.name] = 0
        return answers

    def logs(self) -> str:
        workers = "\n".join(p.read_text()[-2000:] for p in sorted((self.work / "logs").glob("*.log")))
        return f"{self.stack.logs()}\n----- workers\n{workers}"


@contextlib.asynccontextmanager
async def replicas(
    work: Path,
    n: int,
    *,
    workers: int = 2,
    worker_sleep_s: float = 0.0,
    lease_ttl_s: float = 2.0,
    aof: bool = False,
) -> AsyncIterator[Replicas]:
    """The emulator with `workers` worker processes, Redis, S3 and `n` ready replicas; all stopped after."""
    config = EmulatorConfig.for_tests(api_key=RUNPOD_KEY, heartbeat_grace_s=30.0)
    async with Emulator(config).serve(host="127.0.0.1", port=0) as emu:
        env = {
            "PODSTREAM_CACHE_DIR": str(work / "cache"), "PODSTREAM_UPLOAD_URL": "",
            "FILE_WORKER_SLEEP_S": str(worker_sleep_s),
        }  # fmt: skip
        emu.spawn_workers(workers, WORKER, env=env, cwd=ROOT, log_dir=work / "logs")
        async with cluster_stack(
            work, emu.endpoint_url, lease_ttl_s=lease_ttl_s, aof=aof, runpod_key=RUNPOD_KEY
        ) as stack:
            await asyncio.gather(*(stack.start_replica() for _ in range(n)))
            await emu.workers_ready(workers)
            yield Replicas(stack, emu, work)


# ------------------------------------------------------------------------------------------- followers


@dataclass
class Follower:
    """One subscriber's view of a job across replicas: what it applied and what went wrong."""

    name: str
    seqs: list[int] = field(default_factory=list)
    files: dict[int, bytes] = field(default_factory=dict)
    items: dict[int, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    gaps: int = 0
    connections: int = 0
    replicas_used: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    error_records: list[dict[str, Any]] = field(default_factory=list)
    done: dict[str, Any] | None = None

    @property
    def last(self) -> int:
        return self.seqs[-1] if self.seqs else 0

    def apply(self, seq: int) -> None:
        if seq <= self.last:
            self.duplicates += 1
        elif seq != self.last + 1:
            self.gaps += 1
        if seq > self.last:
            self.seqs.append(seq)


class _Hop(Exception):
    """This follower leaves its replica on purpose, to resume on the next one."""


async def _recv(ws: Any, seconds: float) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), seconds)
    frame: dict[str, Any] = msgpack.unpackb(raw, raw=False)
    return frame


async def follow(
    target: Replicas,
    job: str,
    follower: Follower,
    *,
    start: int = 0,
    hop_every: int = 0,
    seconds: float = 120,
) -> Follower:
    """Subscribe to `job` and apply its records until `done`, reconnecting on the next live replica (from
    the last applied seq) whenever a connection ends; with `hop_every`, also after that many records."""
    deadline = time.monotonic() + seconds
    turn = start
    while follower.done is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{follower.name} did not see the job end in {seconds} s: {follower}")
        live = target.stack.live
        if not live:
            await asyncio.sleep(0.1)
            continue
        replica = live[turn % len(live)]
        turn += 1
        try:
            await _session(target, replica.ws_url, job, follower, hop_every)
            follower.replicas_used.add(replica.name)
        except _Hop:
            follower.replicas_used.add(replica.name)
        except (OSError, TimeoutError, websockets.ConnectionClosed, websockets.InvalidHandshake) as exc:
            follower.replicas_used.add(replica.name)
            await asyncio.sleep(0.05 if isinstance(exc, websockets.ConnectionClosed) else 0.2)
    return follower


async def _session(target: Replicas, url: str, job: str, follower: Follower, hop_every: int) -> None:
    async with websockets.connect(
        url, additional_headers=target.headers, compression=None, max_size=2**22, open_timeout=5
    ) as ws:
        follower.connections += 1
        welcome = await _recv(ws, 10)
        assert welcome["t"] == "welcome", welcome
        await ws.send(msgpack.packb({"t": "sub", "job": job, "from": follower.last, "inline": True}))
        pending: dict[str, Any] | None = None
        buffer = bytearray()
        applied = 0
        while True:
            # a replica that stalls (its Redis gone) must not hold the follower: the relay pings every few s
            frame = await _recv(ws, 15)
            kind = frame["t"]
            if kind == "ping":
                await ws.send(msgpack.packb({"t": "pong", "n": frame["n"]}))
            elif kind == "subscribed":
                continue
            elif kind == "ev":
                if pending is not None:
                    follower.errors.append(f"record {frame['seq']} before the bytes of item {pending['seq']}")
                if frame["k"] == "item" and frame.get("url", "").startswith("/v1/"):
                    pending, buffer = frame, bytearray()
                    continue
                if frame["k"] == "error" and frame["seq"] > follower.last:
                    follower.error_records.append(frame)
                follower.apply(frame["seq"])
                applied += 1
                if frame["k"] == "done":
                    follower.done = frame
                    return
            elif kind == "chunk":
                if pending is None or frame["seq"] != pending["seq"] or frame["off"] != len(buffer):
                    follower.errors.append(f"chunk out of place: seq {frame['seq']} off {frame['off']}")
                    return
                buffer.extend(frame["data"])
                if frame["last"]:
                    seq = pending["seq"]
                    if seq > follower.last:  # a resumed item is applied once
                        follower.files[pending["item"]] = bytes(buffer)
                        follower.items[pending["item"]] = pending
                    follower.apply(seq)
                    pending = None
                    applied += 1
            elif kind == "err":
                follower.errors.append(f"err frame: {frame}")
                return
            elif kind == "bye":
                return  # going away, try again: resume elsewhere
            if hop_every and applied >= hop_every and pending is None:
                raise _Hop


def check(follower: Follower, manifest: dict[str, Any], item_sizes: list[int]) -> list[str]:
    """What is wrong with what `follower` ended with (empty: every file, sha256-verified, once, no gap)."""
    problems = list(follower.errors)
    if follower.error_records:
        problems.append(f"error records: {follower.error_records}")
    if follower.duplicates or follower.gaps:
        problems.append(f"{follower.duplicates} duplicated and {follower.gaps} skipped seqs")
    done = follower.done
    if done is None:
        problems.append("never saw `done`")
    elif follower.seqs != list(range(1, done["seq"] + 1)):
        problems.append(f"seqs are not 1..{done['seq']}")
    lost = [k for k in range(len(item_sizes)) if k not in follower.files]
    if lost:
        problems.append(f"{len(lost)} items lost: {lost[:10]}")
    by_item = {entry["item"]: entry for entry in manifest.get("items", [])}
    for k, data in sorted(follower.files.items()):
        expected = file_bytes(k, item_sizes[k])
        if data != expected or hashlib.sha256(data).hexdigest() != by_item.get(k, {}).get("sha256"):
            problems.append(f"item {k}: bytes differ from the worker's or from the manifest's sha256")
    return problems


async def until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        await asyncio.sleep(0.02)
