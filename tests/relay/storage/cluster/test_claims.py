"""Leases kept and jobs taken over, with replicas as real processes against a real redis-server."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import redis

from relay.storage.cluster.claims import JobClaimer, LeaseKeeper
from relay.storage.cluster.job_index import RedisJobIndex
from relay.storage.cluster.lease import RedisLeases
from tests.relay.storage.conftest import RedisServer


async def holder(server: RedisServer, replica: str, ttl_s: float) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.relay.storage.cluster.lease_holder", server.url, replica, str(ttl_s),
        stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip


async def line(process: asyncio.subprocess.Process) -> list[str]:
    assert process.stdout is not None
    return (await asyncio.wait_for(process.stdout.readline(), 60)).decode().split()


async def kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGKILL)
    await process.wait()


async def test_a_killed_holder_is_taken_over_by_a_live_replica(
    redis_server: RedisServer, rclient: redis.Redis
) -> None:
    ttl = 1.0
    index = RedisJobIndex(rclient)
    index.create("job-1", {"created_at": 1.0})
    a = await holder(redis_server, "replica-a", ttl)
    claims: list[tuple[str, int, float]] = []
    claimed = asyncio.Event()

    async def on_claim(job: str, keeper: LeaseKeeper) -> None:
        claims.append((job, keeper.lease.token, time.monotonic()))
        claimed.set()

    b = JobClaimer(RedisLeases(rclient, "replica-b", ttl_s=ttl), index, on_claim)
    try:
        assert await line(a) == ["claimed", "job-1", "1"]
        scans = asyncio.create_task(b.run())
        for n in (1, 2, 3):  # a keeps its lease alive across several of b's scans: b never gets it
            assert await line(a) == ["renewed", "job-1", str(n)]
        assert claims == [] and b.leases.holder_of("job-1") == ("replica-a", 1)
        await kill(a)
        killed = time.monotonic()
        await asyncio.wait_for(claimed.wait(), 60)
        assert [(job, token) for job, token, _ in claims] == [("job-1", 2)]
        assert b.leases.holder_of("job-1") == ("replica-b", 2)
        takeover = claims[0][2] - killed
        print(f"takeover after SIGKILL: {takeover:.2f} s = {takeover / ttl:.2f} x the lease TTL")
        scans.cancel()
        await asyncio.gather(scans, return_exceptions=True)
    finally:
        await kill(a)
        await b.stop()
    assert b.leases.holder_of("job-1") is None  # a clean stop releases: no TTL to wait out


async def test_racing_replicas_split_the_jobs_one_holder_each(
    redis_server: RedisServer, rclient: redis.Redis
) -> None:
    """Three replica processes scan the same 20 unfinished jobs at once: each job is claimed exactly once."""
    index = RedisJobIndex(rclient)
    jobs = [f"job-{n}" for n in range(20)]
    for job in jobs:
        index.create(job, {"created_at": 1.0})
    leases = RedisLeases(rclient, "checker")
    replicas = [await holder(redis_server, f"replica-{n}", 30.0) for n in range(3)]
    claimed: dict[str, list[tuple[str, int]]] = {}
    all_claimed = asyncio.Event()

    async def read(n: int, process: asyncio.subprocess.Process) -> None:
        while True:
            word, job, token = await line(process)
            if word == "claimed":
                claimed.setdefault(job, []).append((f"replica-{n}", int(token)))
                if len(claimed) == len(jobs):
                    all_claimed.set()

    readers = [asyncio.create_task(read(n, p)) for n, p in enumerate(replicas)]
    try:
        await asyncio.wait_for(all_claimed.wait(), 60)
        holders = {job: leases.holder_of(job) for job in jobs}
    finally:
        for process in replicas:
            await kill(process)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    assert claimed == {job: [holders[job]] for job in jobs}  # once each, by the replica Redis names
    assert all(token == 1 for ((_, token),) in claimed.values())


async def test_a_keeper_that_was_replaced_says_so(rclient: redis.Redis) -> None:
    a, b = RedisLeases(rclient, "a", ttl_s=0.3), RedisLeases(rclient, "b", ttl_s=0.3)
    lease = a.acquire("job")
    assert lease is not None
    reasons: list[str] = []
    keeper = LeaseKeeper(a, lease, on_lost=reasons.append).start()
    rclient.delete(a.keys.lease("job"))  # a stalled past its TTL ...
    assert b.acquire("job") is not None  # ... and b took the job over
    await asyncio.wait_for(keeper.lost.wait(), 30)
    assert reasons == ["the lease expired and was taken over"]
    await keeper.stop()
    assert b.holder_of("job") == ("b", 2)  # a's stop did not release b's lease
