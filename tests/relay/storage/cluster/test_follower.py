"""JournalFollower against a real redis-server: one blocking read follows many jobs, woken by follow()."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio as aioredis

from relay.storage.cluster.fenced_stream import FencedStream
from relay.storage.cluster.follower import JournalFollower
from relay.storage.cluster.keys import Keys
from relay.storage.cluster.lease import RedisLeases
from relay.storage.cluster.redis_journal import RedisJournal
from tests.relay.storage.conftest import RedisServer


def writer(client: redis.Redis, job: str) -> RedisJournal:
    lease = RedisLeases(client, "poller").acquire(job)
    assert lease is not None
    keys = Keys()
    journal = RedisJournal(FencedStream(client, keys.journal(job), keys.fence(job)), token=lease.token)
    list(journal.load())
    return journal


@pytest.fixture
async def aclient(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis(host="127.0.0.1", port=redis_server.port)
    try:
        yield client
    finally:
        await client.aclose()


async def test_one_blocking_read_follows_jobs_added_while_it_blocks(
    rclient: redis.Redis, aclient: aioredis.Redis
) -> None:
    seen: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    # block_ms far beyond the test's wait: only the wake stream can end a read in time
    follower = JournalFollower(
        aclient, "replica-b", lambda job, seq: seen.put_nowait((job, seq)), block_ms=600_000
    )
    a, b = writer(rclient, "job-a"), writer(rclient, "job-b")
    a.append("status", status="IN_PROGRESS")
    a.commit()
    await follower.follow("job-a", 0)
    task = asyncio.create_task(follower.run())
    try:
        await asyncio.sleep(1)
        print(
            "DBG",
            seen.qsize(),
            follower.reads,
            follower._positions,
            follower._wake_id,
            task.done() and task.exception(),
        )
        assert await asyncio.wait_for(seen.get(), 30) == ("job-a", 1)  # what was there before following
        await follower.follow("job-b", 0)  # while the read blocks: woken, the next read includes job-b
        b.extend([("status", {"status": "IN_PROGRESS"}), ("progress", {"item": 0, "step": 1, "steps": 2})])
        b.commit()
        assert await asyncio.wait_for(seen.get(), 30) == ("job-b", 2)
        a.append("done", status="COMPLETED", items=0, errors=0)
        a.commit()
        assert await asyncio.wait_for(seen.get(), 30) == ("job-a", 2)
        await follower.unfollow("job-a")
        a.append("status", status="COMPLETED")  # not followed any more: no call
        a.commit()
        b.append("done", status="COMPLETED", items=0, errors=0)
        b.commit()
        assert await asyncio.wait_for(seen.get(), 30) == ("job-b", 3)
        assert seen.empty() and "job-a" not in follower and "job-b" in follower
    finally:
        await follower.stop()
        await asyncio.wait_for(task, 30)
