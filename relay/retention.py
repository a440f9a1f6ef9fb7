"""Retention: when finished jobs, unclaimed uploads and staged inputs go, and the disk quota's evictions.

A finished job is deleted `retention_s` after it finished (its own `retention_s` when it was submitted with
one), by a periodic sweep that also re-measures the data directory against the disk quota and, above it,
deletes the oldest finished jobs first. A job with readers (websocket or SSE subscribers replaying it,
media downloads) is left for a later sweep, so a reader never loses a file mid-read. In cluster mode only
the replica holding the sweeper's lease sweeps (one sweep at a time across the replicas), and the quota
bounds the local spool, so nothing is evicted for it.

The relay (`relay.service.Relay`) owns the jobs; this object decides which go and asks the relay to delete
them (`RetentionHost.remove_job`), so deleting a job stays one operation wherever it is decided.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Protocol

from relay.api import uploads
from relay.config import RelaySettings
from relay.logs import job as job_log
from relay.storage.input_store import InputQuota, InputStore
from relay.storage.job import Jobs
from relay.storage.quota import DiskQuota

log = logging.getLogger("podstream.relay.service")


class SweepLease(Protocol):
    """Cluster mode: the lease that makes one replica at a time the sweeper (blocking)."""

    def sweep_lease(self) -> bool: ...


class RetentionHost(Protocol):
    """What retention needs of the relay: its jobs and what may be deleted now."""

    settings: RelaySettings
    store: Jobs
    quota: DiskQuota
    inputs: InputStore
    input_quota: InputQuota

    def deletable(self, job: str) -> bool:
        """Finished, not polled and not being read."""
        ...

    def remove_job(self, job: str, reason: str) -> bool:
        """Delete the job now (it is gone for every new request at once); False when it could not be."""
        ...


class Retention:
    def __init__(self, host: RetentionHost, *, lease: SweepLease | None = None) -> None:
        self.host = host
        #: Cluster mode: sweep only while holding the sweeper's lease.
        self.lease = lease
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Sweep periodically from now on (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._sweep_forever(), name="relay janitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def expires_at(self, meta: dict[str, Any]) -> float | None:
        """When a job with this metadata is deleted (None: not finished, or kept for ever)."""
        finished = meta.get("finished_at")
        retention = meta.get("retention_s")
        if not isinstance(retention, int | float) or isinstance(retention, bool):
            retention = self.host.settings.retention_s
        if not finished or retention <= 0:
            return None
        return float(finished) + float(retention)

    def sweep(self, now: float | None = None) -> list[str]:
        """Delete finished jobs past their retention (not those being read); returns their ids."""
        now = time.time() if now is None else now
        store = self.host.store
        deleted = []
        for job in store.due(now):  # cluster mode: Redis says which are due, no read of every job's metadata
            if not self.host.deletable(job):
                continue
            expires = self.expires_at(store.meta(job))
            if expires is None or expires > now:
                continue
            if self.host.remove_job(job, "expired"):
                deleted.append(job)
        return deleted

    def sweep_uploads(self, now: float | None = None) -> int:
        """Delete uploads that no item claimed, past their grace (`relay.api.uploads.sweep_unclaimed`)."""
        now = time.time() if now is None else now
        store = self.host.store
        count = 0
        for job in store.job_ids():
            finished = store.finished_at(job) is not None
            removed = uploads.sweep_unclaimed(
                store.root / job, finished=finished, now=now, grace_s=self.host.settings.upload_grace_s
            )
            if removed:
                names = ", ".join(p.name for p in removed[:5])
                log.info(
                    "job %s: deleted %d unclaimed upload(s): %s", job, len(removed), names, extra=job_log(job)
                )
            count += len(removed)
        return count

    def sweep_inputs(self, now: float | None = None) -> int:
        """Delete staged inputs past `input_ttl_s` that no stored job refers to (a job keeps its inputs for as
        long as it is kept: until its retention ends)."""
        now = time.time() if now is None else now
        held: set[tuple[str, str]] = set()
        for job in self.host.store.job_ids():
            refs = self.host.store.meta(job).get("inputs")
            for ref in refs if isinstance(refs, list) else ():
                owner, _, sha256 = str(ref).partition("/")
                held.add((owner, sha256))
        removed = self.host.inputs.sweep(now, self.host.settings.input_ttl_s, held)
        if removed:
            self.host.input_quota.forget()
            log.info("deleted %d expired staged input(s)", len(removed))
        return len(removed)

    def evict(self, needed: int) -> int:
        """Delete finished jobs, oldest first (not those being read), until `needed` bytes are freed."""
        store, quota = self.host.store, self.host.quota
        candidates = []
        for job in store.job_ids():
            finished = store.finished_at(job)
            if finished is not None and self.host.deletable(job):
                candidates.append((finished, job))
        if sum(quota.job_bytes(job) for _f, job in candidates) < needed:
            return 0  # deleting every candidate would not make room: keep them
        freed = 0
        for _finished, job in sorted(candidates):
            if freed >= needed:
                break
            size = quota.job_bytes(job)
            if self.host.remove_job(job, "quota"):
                freed += size
                log.warning("disk quota: deleted finished job %s (%d bytes)", job, size, extra=job_log(job))
        return freed

    def evict_from_any_thread(self, needed: int) -> int:
        """`evict` on the event loop, from whichever thread asks (the pollers write in worker threads):
        the disk quota's `evict`."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return 0
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return self.evict(needed)
        done = threading.Event()
        result = [0]

        def run() -> None:
            try:
                result[0] = self.evict(needed)
            finally:
                done.set()

        loop.call_soon_threadsafe(run)
        done.wait(30)
        return result[0]

    async def _sweep_forever(self) -> None:
        retention = self.host.settings.retention_s or 3600.0
        interval = min(60.0, max(1.0, retention / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                await self.sweep_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention sweep failed")

    async def sweep_once(self) -> None:
        """One round of the janitor: expired jobs, then the disk quota (measured afresh). In cluster mode
        only the replica holding the sweeper's lease sweeps; items leave the local spool once in the bucket."""
        if self.lease is not None:
            if await asyncio.to_thread(self.lease.sweep_lease):
                deleted = self.sweep()  # a few Redis calls on the loop: deletion touches the loop's state
                if deleted:
                    log.info("deleted %d expired job(s)", len(deleted))
                await asyncio.to_thread(self.sweep_inputs)
            return
        deleted = self.sweep()
        if deleted:
            log.info("deleted %d expired job(s)", len(deleted))
        self.sweep_uploads()
        await asyncio.to_thread(self.sweep_inputs)
        quota = self.host.quota
        quota.set_measured(await asyncio.to_thread(self.host.store.measure))
        limit = self.host.settings.disk_quota_bytes
        if limit > 0 and quota.used > limit:
            self.evict(quota.used - limit)
