"""Cluster mode's failure tests (issue 13) through real processes: `podstream relay` replicas on one
redis-server and one S3 server (moto), the RunPod emulator with real worker processes, websocket
subscribers that resume on whichever replica is alive. Each test is sized to end well within 2 minutes on a
busy 2-core machine: small items, a 1.5 s lease TTL."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.relay.storage.cluster.replicas import Follower, Replicas, check, follow, replicas, sizes, until

TTL = 1.5


async def stop_all(tasks: list[asyncio.Task[Follower]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(BaseException):
            await task


def followers(
    cluster: Replicas, job: str, n: int, hop_every: int
) -> tuple[list[Follower], list[asyncio.Task[Follower]]]:
    """n subscribers on different replicas; every other one hops to the next replica every `hop_every`."""
    subs = [Follower(f"sub{i}") for i in range(n)]
    tasks = [
        asyncio.create_task(follow(cluster, job, sub, start=i, hop_every=hop_every if i % 2 else 0))
        for i, sub in enumerate(subs)
    ]
    return subs, tasks


def past(sub: Follower, items: int) -> Callable[[], bool]:
    return lambda: len(sub.files) >= items


async def assert_all_arrived(
    cluster: Replicas,
    job: str,
    subs: list[Follower],
    tasks: list[asyncio.Task[Follower]],
    item_sizes: list[int],
) -> None:
    manifest = await cluster.finished(job)
    await asyncio.wait_for(asyncio.gather(*tasks), 60)
    problems = {sub.name: check(sub, manifest, item_sizes) for sub in subs}
    problems["manifest"] = [f"{k}: {v}" for k, v in manifest.items() if k in ("status", "errors")]
    if manifest["status"] == "COMPLETED" and not manifest["errors"]:
        problems["manifest"] = []
    if [entry["item"] for entry in manifest["items"]] != list(range(len(item_sizes))):
        problems["manifest"].append(f"{len(manifest['items'])} items listed")
    assert all(not p for p in problems.values()), f"{problems}\n{cluster.logs()}"
    # and over HTTP, from a replica that was not the one that stored them
    async with cluster.http() as http:
        replica = cluster.stack.live[-1]
        for entry in manifest["items"][:: max(1, len(item_sizes) // 10)]:
            got = await http.get(httpx.URL(replica.url).join(entry["url"]))
            assert got.status_code == 200 and len(got.content) == item_sizes[entry["item"]]


async def test_the_polling_replica_sigkilled_three_times_loses_nothing(tmp_path: Path) -> None:
    item_sizes = sizes(150)
    async with replicas(tmp_path, 3, workers=2, worker_sleep_s=0.15, lease_ttl_s=TTL) as cluster:
        job = await cluster.submit(item_sizes)
        subs, tasks = followers(cluster, job, 4, hop_every=40)
        killed: list[str] = []
        takeovers: list[float] = []
        try:
            for at in (30, 70, 110):
                await until(past(subs[0], at), 60, f"a subscriber at item {at}")
                holder = await cluster.wait_poller(job)
                await cluster.stack.replica(holder).kill()
                killed_at = time.monotonic()
                killed.append(holder)
                await cluster.wait_poller(job, not_=holder)
                takeovers.append(time.monotonic() - killed_at)
                print(f"killed {holder}; a survivor polled after {takeovers[-1]:.2f} s")
                await cluster.stack.start_replica()  # so there are always survivors to kill next
            await assert_all_arrived(cluster, job, subs, tasks, item_sizes)
        finally:
            await stop_all(tasks)
        assert len(set(killed)) == 3, killed
        # A subscriber moves when its replica dies or when it hops. Which replica holds the lease (and so
        # is killed) is up to the lease race, so a subscriber that never hops and sat on a replica that was
        # never killed rightly stays put: asserting that every subscriber moved made this test flaky.
        moved = [sub for i, sub in enumerate(subs) if i % 2 or sub.replicas_used & set(killed)]
        assert moved and all(len(sub.replicas_used) >= 2 for sub in moved), [
            (sub.name, sub.replicas_used) for sub in subs
        ]
        # issue 13: another replica takes over within 2x the lease TTL (the slack: process scheduling on CI)
        assert max(takeovers) <= 2 * TTL + 1.0, takeovers


async def test_two_replicas_racing_for_one_job_poll_it_once(tmp_path: Path) -> None:
    item_sizes = sizes(40)
    async with replicas(tmp_path, 2, workers=1, worker_sleep_s=0.05, lease_ttl_s=TTL) as cluster:
        cluster.emu.reset_stats()
        job = await cluster.submit(item_sizes)
        subs, tasks = followers(cluster, job, 2, hop_every=10)
        holders: set[str] = set()
        try:
            while not all(sub.done for sub in subs):
                holder = cluster.stack.poller(job)
                if holder is not None:
                    holders.add(holder)
                await asyncio.sleep(0.05)
            await assert_all_arrived(cluster, job, subs, tasks, item_sizes)
        finally:
            await stop_all(tasks)
        stats = cluster.emu.stats()["routes"]
        assert stats["stream"]["max_in_flight"] == 1, stats["stream"]
        assert len(holders) == 1, holders
        assert stats["run"]["requests"] == 1  # no resend job: nothing was drained twice or lost


async def test_redis_restarted_mid_job_loses_nothing(tmp_path: Path) -> None:
    item_sizes = sizes(60)
    async with replicas(tmp_path, 2, worker_sleep_s=0.1, lease_ttl_s=TTL, aof=True) as cluster:
        job = await cluster.submit(item_sizes)
        subs, tasks = followers(cluster, job, 2, hop_every=15)
        try:
            await until(past(subs[0], 15), 60, "a subscriber at item 15")
            cluster.stack.redis.kill()  # AOF with appendfsync always: every acknowledged write survives
            down: dict[str, int] = {}
            for _ in range(12):
                down.update({k: v for k, v in (await cluster.readyz()).items() if v != 200})
                await asyncio.sleep(0.25)
            cluster.stack.redis.start()
            await assert_all_arrived(cluster, job, subs, tasks, item_sizes)
        finally:
            await stop_all(tasks)
        assert set(down) == {r.name for r in cluster.stack.live} and set(down.values()) == {503}, down


async def test_s3_unreachable_for_10_s_mid_job_loses_nothing(tmp_path: Path) -> None:
    item_sizes = sizes(60)
    async with replicas(tmp_path, 2, worker_sleep_s=0.1, lease_ttl_s=TTL) as cluster:
        job = await cluster.submit(item_sizes)
        subs, tasks = followers(cluster, job, 2, hop_every=15)
        try:
            await until(past(subs[0], 15), 60, "a subscriber at item 15")
            await cluster.stack.s3.proxy.cut()
            down: dict[str, int] = {}
            cut_at = time.monotonic()
            while time.monotonic() - cut_at < 10:
                down.update({k: v for k, v in (await cluster.readyz()).items() if v != 200})
                await asyncio.sleep(0.25)
            await cluster.stack.s3.proxy.restore()
            # every item a subscriber got is whole (check: bytes and sha256), including those stored after
            await assert_all_arrived(cluster, job, subs, tasks, item_sizes)
        finally:
            await stop_all(tasks)
        assert set(down) == {r.name for r in cluster.stack.live} and set(down.values()) == {503}, down
