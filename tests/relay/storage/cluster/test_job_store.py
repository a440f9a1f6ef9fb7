"""The real `JobPoller` on a `ClusterJobStore`: RunPod emulator -> Redis journal + S3 bucket, then read back
by another replica. Real redis-server, moto S3, the emulator over HTTP, a scripted worker."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from podstream.emulator import Emulator
from relay.ingest.poller import JobPoller, PollerSet
from relay.ingest.runpod import RunPodClient
from relay.storage.cluster.fenced_stream import FencedStream
from relay.storage.cluster.job_index import RedisJobIndex
from relay.storage.cluster.job_store import ClusterJobStore
from relay.storage.cluster.keys import Keys
from relay.storage.cluster.lease import RedisLeases
from relay.storage.cluster.redis_journal import RedisIngestLog, RedisJournal
from relay.storage.cluster.s3_media import S3MediaStore
from tests.relay.conftest import Batch, ScriptedWorker, make_files


@pytest.fixture
async def runpod(emulator: Emulator) -> AsyncIterator[RunPodClient]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield RunPodClient(emulator.endpoint_url, "local-key", http, retries=2)


def cluster_store(
    tmp_path: Path, client: redis.Redis, media: S3MediaStore, job: str, token: int | None
) -> ClusterJobStore:
    keys = Keys()
    return ClusterJobStore(
        tmp_path / "spool", job, media=media, index=RedisJobIndex(client),
        journal=RedisJournal(FencedStream(client, keys.journal(job), keys.fence(job)), token=token),
        wire=RedisIngestLog(FencedStream(client, keys.wire(job), keys.fence(job)), token=token),
    )  # fmt: skip


async def ping(worker: ScriptedWorker, job: str) -> None:
    """The worker's heartbeat (the SDK pings every few seconds; the scripted worker does not by itself)."""
    while True:
        await worker.http.get(f"{worker.base}/ping/{worker.pod}", params={"job_id": job})
        await asyncio.sleep(0.5)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_a_job_is_ingested_into_redis_and_the_bucket_and_read_back_elsewhere(
    tmp_path: Path, runpod: RunPodClient, worker: ScriptedWorker, rclient: redis.Redis, media: S3MediaStore
) -> None:
    job = (await runpod.run({}))["id"]
    lease = RedisLeases(rclient, "replica-a").acquire(job)
    assert lease is not None
    store = cluster_store(tmp_path, rclient, media, job, lease.token)
    store.open(meta={"job": job, "created_at": time.time(), "source": "submit"})
    poller = JobPoller(store, runpod, wait_ms=1000)
    polling = asyncio.create_task(poller.run())
    files = make_files(3, 300_000)
    await worker.take()
    for envelope in Batch(job, files).envelopes:
        await worker.post(job, envelope)
    await worker.done(job)
    await asyncio.wait_for(polling, 60)

    # another replica: read-only, everything from Redis and the bucket
    other = cluster_store(tmp_path / "b", rclient, media, job, None).open()
    records = other.journal.read(0, 1000)
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    items = [r for r in records if r["k"] == "item"]
    assert [(r["item"], r["sha256"], r["size"]) for r in items] == [
        (i, sha(f), len(f)) for i, f in enumerate(files)
    ]
    for record in items:  # each record names an object that holds exactly its bytes
        key = media.url.key(job, record["_file"])
        assert sha(media.read_range(key, 0, record["size"] + 10)) == record["sha256"]
    assert records[-1]["k"] == "done" and records[-1]["status"] == "COMPLETED" and records[-1]["errors"] == 0
    assert other.finished and len(other.items) == 3
    meta: Any = RedisJobIndex(rclient).meta(job)
    assert meta["finished_at"] and job not in RedisJobIndex(rclient).active()
    assert not list((tmp_path / "spool" / job).rglob("*.part"))  # nothing left spooled


async def test_a_poller_that_lost_its_job_cannot_publish(
    tmp_path: Path, runpod: RunPodClient, worker: ScriptedWorker, rclient: redis.Redis, media: S3MediaStore
) -> None:
    """Replica a polls; its lease is taken over by b (a stalled past the TTL). a's next commit is refused by
    the fence: its poller stops (`Fenced`; PollerSet does not restart it, a restart would be refused too)
    and nothing it drained afterwards is in the journal."""
    job = (await runpod.run({}))["id"]
    a = RedisLeases(rclient, "replica-a")
    lease = a.acquire(job)
    assert lease is not None
    store = cluster_store(tmp_path, rclient, media, job, lease.token)
    store.open(meta={"job": job, "created_at": time.time()})
    pollers = PollerSet()
    pollers.start(JobPoller(store, runpod, wait_ms=1000))
    envelopes = Batch(job, make_files(2, 100_000)).envelopes
    await worker.take()
    heartbeat = asyncio.create_task(ping(worker, job))  # the job must outlive the takeover, not time out
    try:
        await worker.post(job, envelopes[0])
        reader = cluster_store(tmp_path / "b", rclient, media, job, None).open()
        journal = reader.journal
        assert isinstance(journal, RedisJournal)
        while await asyncio.to_thread(journal.wait, 30_000) < 2:  # status, then the first envelope's progress
            pass
        rclient.delete(a.keys.lease(job))
        assert RedisLeases(rclient, "replica-b").acquire(job) is not None
        fenced_at = journal.refresh()  # what a committed before the fence moved (at least those two) stays
        assert job in pollers  # a still polls: it is about to drain envelopes it may not publish
        for envelope in envelopes[1:]:
            await worker.post(job, envelope)
        await worker.done(job)
        await asyncio.wait_for(pollers.wait(job), 60)
    finally:
        heartbeat.cancel()
        await asyncio.gather(heartbeat, return_exceptions=True)
    assert job not in pollers and pollers.restarts == 0
    assert journal.refresh() == fenced_at  # nothing after the fence moved: no item, no done
    kinds = [r["k"] for r in journal.read(0, 100)]
    assert kinds[:2] == ["status", "progress"] and "item" not in kinds and "done" not in kinds
