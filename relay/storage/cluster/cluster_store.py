"""The relay's job store in cluster mode: `relay.storage.local.store.Store`'s surface over the Redis job index and the bucket.

`relay.service.Relay` creates, opens, lists and deletes jobs through this as it does through `Store` on
local disk. Every job is a `ClusterJobStore` (journal and ingest log in Redis, items in the bucket), opened
read-only; the replica that wins a job's lease turns it writable (`relay.storage.cluster.replica`). The local
directory (`root`) only spools items while they arrive.

Deleting a job: `trash` removes it from the index (gone for every new request on every replica at once),
`remove` then deletes its objects and its local spool.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.storage.cluster.cluster import Cluster
from relay.storage.cluster.fenced_stream import FencedStream
from relay.storage.cluster.job_store import ClusterJobStore
from relay.storage.cluster.redis_journal import RedisIngestLog, RedisJournal
from relay.storage.errors import JobBroken, check_job_id
from relay.storage.job import JobHooks
from relay.storage.quota import DiskQuota


class ClusterStore:
    def __init__(
        self,
        cluster: Cluster,
        spool: Path,
        *,
        tail: int = 1024,
        quota: DiskQuota | None = None,
        retention_s: float = 0.0,
        on_spool_error: Callable[[OSError], None] | None = None,
        hooks: JobHooks | None = None,
    ) -> None:
        self.cluster = cluster
        #: The relay's retention of finished jobs (their deadline in the index, for the sweeper).
        self.retention_s = retention_s
        self.root = spool / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.tail = tail
        #: The disk quota, of the local spool: items count while they are spooled (on their way to the
        #: bucket); the bucket's size is bounded by retention and its lifecycle rules, not by this.
        self.quota = quota or DiskQuota()
        #: Hears of an item's spool write that failed (`relay.storage.cluster.replica`: not ready, leases given up).
        self.on_spool_error = on_spool_error
        self.hooks = hooks or JobHooks()

    def _job_store(self, job: str) -> ClusterJobStore:
        keys, client = self.cluster.keys, self.cluster.redis
        return ClusterJobStore(
            self.root, job, index=self.cluster.index, media=self.cluster.media, quota=self.quota,
            hooks=self.hooks, default_retention_s=self.retention_s, on_spool_error=self.on_spool_error,
            journal=RedisJournal(FencedStream(client, keys.journal(job), keys.fence(job)), token=None, tail=self.tail),
            wire=RedisIngestLog(FencedStream(client, keys.wire(job), keys.fence(job)), token=None),
        )  # fmt: skip

    def exists(self, job: str) -> bool:
        return self.cluster.index.exists(check_job_id(job))

    def create(self, job: str, **meta: Any) -> ClusterJobStore:
        """A new job in the index (read-only until this replica takes its lease). Two replicas creating
        the same job at once: one creates it, the other opens what the first wrote."""
        store = self._job_store(job)
        store.open(meta={"job": job, "created_at": time.time(), **meta})
        return store

    def open(self, job: str) -> ClusterJobStore:
        meta = self.cluster.index.meta(check_job_id(job))
        if meta is None:
            if self.cluster.index.exists(job):
                raise JobBroken(job, "its metadata in Redis is not a JSON object")
            raise KeyError(job)
        store = self._job_store(job)
        store.open(stored=meta)
        return store

    def read_meta(self, job: str) -> dict[str, Any]:
        meta = self.cluster.index.meta(check_job_id(job))
        if meta is None:
            raise JobBroken(job, "its metadata is missing from Redis")
        return meta

    def meta(self, job: str) -> dict[str, Any]:
        return self.cluster.index.meta(check_job_id(job)) or {}

    def finished_at(self, job: str) -> float | None:
        value = self.meta(job).get("finished_at")
        return float(value) if isinstance(value, int | float) else None

    def measure(self) -> dict[str, int]:
        """Nothing to measure: items leave the local spool once they are in the bucket."""
        return {}

    def job_ids(self) -> list[str]:
        return self.cluster.index.job_ids()

    def due(self, now: float) -> list[str]:
        """Finished jobs whose retention deadline is at or before `now` (the index keeps them sorted)."""
        return self.cluster.index.expired(now)

    def trash(self, job: str) -> Path | None:
        """Remove the job from the index; returns what `remove` is to delete (objects, local spool)."""
        if not self.cluster.index.exists(check_job_id(job)):
            return None
        self.cluster.index.delete(job)
        return self.root / job

    def empty_trash(self) -> None:
        """Nothing: a job half deleted is out of the index already; its leftover objects are deleted by
        the bucket's lifecycle rule (docs/deploy.md)."""

    def delete(self, job: str) -> None:
        target = self.trash(job)
        if target is not None:
            self.remove(target)

    def remove(self, directory: Path) -> None:
        self.cluster.media.delete_job(directory.name)
        with contextlib.suppress(OSError):
            shutil.rmtree(directory)
