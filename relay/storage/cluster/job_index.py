"""The job index in Redis: which jobs exist (sorted by creation), which are unfinished, their metadata, and
retention deadlines.

`create` is `SET meta NX` (two replicas attaching the same job at once: one creates it, the other finds it),
plus `ZADD jobs`. A finished job's deadline goes into the `expiry` sorted set, so the sweeper (one replica at
a time, by lease) asks Redis for what is due instead of reading every job.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from relay.storage.cluster.keys import Keys


class RedisJobIndex:
    def __init__(self, client: redis.Redis, keys: Keys | None = None) -> None:
        self.client = client
        self.keys = keys or Keys()

    def create(self, job: str, meta: dict[str, Any]) -> bool:
        """Record a new job; False (and nothing changed) when it exists already."""
        if not self.client.set(self.keys.meta(job), json.dumps(meta), nx=True):
            return False
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(self.keys.jobs, {job: float(meta.get("created_at", 0.0))})
        if not meta.get("finished_at"):
            pipe.sadd(self.keys.active, job)
        pipe.execute()
        return True

    def meta(self, job: str) -> dict[str, Any] | None:
        raw = self.client.get(self.keys.meta(job))
        if raw is None:
            return None
        meta = json.loads(raw)
        return meta if isinstance(meta, dict) else None

    def update(self, job: str, meta: dict[str, Any], *, default_retention_s: float = 0.0) -> None:
        """Replace the job's metadata; a finished job (`finished_at`) with a retention (its own
        `retention_s`, else `default_retention_s`, the relay's) gets its deadline."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.meta(job), json.dumps(meta))
        finished, keep = meta.get("finished_at"), meta.get("retention_s", default_retention_s)
        if isinstance(finished, int | float):
            pipe.srem(self.keys.active, job)
            if isinstance(keep, int | float) and keep > 0:
                pipe.zadd(self.keys.expiry, {job: float(finished) + float(keep)})
        pipe.execute()

    def active(self) -> list[str]:
        """Jobs not finished yet (each needs exactly one poller somewhere)."""
        return sorted(
            j.decode() if isinstance(j, bytes) else str(j) for j in self.client.smembers(self.keys.active)
        )

    def exists(self, job: str) -> bool:
        return bool(self.client.exists(self.keys.meta(job)))

    def job_ids(self) -> list[str]:
        return sorted(
            j.decode() if isinstance(j, bytes) else str(j) for j in self.client.zrange(self.keys.jobs, 0, -1)
        )

    def expired(self, now: float) -> list[str]:
        """Finished jobs whose retention deadline is at or before `now`."""
        due = self.client.zrangebyscore(self.keys.expiry, "-inf", now)
        return [j.decode() if isinstance(j, bytes) else str(j) for j in due]

    def delete(self, job: str) -> None:
        """Forget the job: its metadata, journal, ingest log, lease and fence (its media: `MediaStore`)."""
        k = self.keys
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(k.meta(job), k.journal(job), k.wire(job), k.lease(job), k.fence(job))
        pipe.zrem(k.jobs, job)
        pipe.zrem(k.expiry, job)
        pipe.srem(k.active, job)
        pipe.execute()
