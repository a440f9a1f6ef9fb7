"""The relay as one object: settings, store, hub, pollers, RunPod client and live connections.

`Relay.start` reopens every job in the data directory (finished jobs replay from disk; unfinished ones
resume polling) and `Relay.stop` stops pollers and says `bye 4000` to every websocket. The HTTP and websocket
layers (`relay.app`, `relay.ws`) only translate requests into calls on this object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Protocol

import httpx

from relay.auth import AllowAll, Authorizer
from relay.config import RelaySettings
from relay.hub import ChunkCache, Hub
from relay.poller import JobPoller, PollerSet
from relay.runpod import Backoff, RunPodClient
from relay.store import JobStore, Store, check_job_id

log = logging.getLogger("podstream.relay")


class Closable(Protocol):
    async def bye(self, code: int, reason: str) -> None: ...


class NotConfigured(Exception):
    """The relay has no RunPod URL: it can replay jobs but not submit or poll them."""


class Relay:
    def __init__(
        self,
        settings: RelaySettings,
        *,
        http_client: httpx.AsyncClient | None = None,
        authorizer: Authorizer | None = None,
    ) -> None:
        self.settings = settings
        self.store = Store(settings.data_dir, fsync=settings.fsync == "always", tail=settings.tail_records)
        self.hub = Hub()
        self.pollers = PollerSet(settings.max_pollers)
        self.chunks = ChunkCache(settings.chunk_cache_bytes, settings.chunk_bytes)
        self.auth: Authorizer = authorizer or AllowAll()
        self.connections: set[Closable] = set()
        self.started_at = time.time()
        self._jobs: dict[str, JobStore] = {}
        self._own_client = http_client is None and bool(settings.runpod_url)
        self._http = http_client
        self.runpod: RunPodClient | None = None
        self._janitor: asyncio.Task[None] | None = None
        self.backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.settings.runpod_url:
            if self._http is None:
                timeout = httpx.Timeout(self.settings.read_timeout_s, connect=self.settings.connect_timeout_s)
                limits = httpx.Limits(max_connections=max(100, self.settings.max_pollers + 20))
                self._http = httpx.AsyncClient(timeout=timeout, limits=limits)
            self.runpod = RunPodClient(
                self.settings.runpod_url, self.settings.runpod_key, self._http,
                retries=self.settings.retries, backoff=self.backoff, read_timeout_s=self.settings.read_timeout_s,
            )  # fmt: skip
        for job in self.store.job_ids():
            if self.store.finished_at(job) is not None:
                continue  # opened when first asked for
            try:
                store = self.job(job)
            except Exception:
                log.exception("cannot reopen job %s; leaving it alone", job)
                continue
            if store is not None and not store.finished:
                self._poll(store)
        if self.settings.retention_s > 0:
            self._janitor = asyncio.create_task(self._sweep_forever(), name="relay janitor")

    async def stop(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        await self.drain()
        await self.pollers.stop(grace_s=self.settings.poll_wait_ms / 1000 + 1.0)
        for store in self._jobs.values():
            self.hub.forget(store.job)
            store.close()
        self._jobs.clear()
        if self._own_client and self._http is not None:
            await self._http.aclose()

    async def drain(self, code: int = 4000, reason: str = "server going away") -> None:
        """Say bye to every websocket (they reconnect and resume elsewhere or after the restart)."""
        connections = list(self.connections)
        if connections:
            await asyncio.gather(*(c.bye(code, reason) for c in connections), return_exceptions=True)

    # ------------------------------------------------------------------ jobs

    def job(self, job: str) -> JobStore | None:
        """The job's store (opened on first use), or None when the relay does not know the job."""
        check_job_id(job)
        store = self._jobs.get(job)
        if store is None:
            if not self.store.exists(job):
                return None
            store = self._jobs[job] = self.store.open(job)
        return store

    def job_ids(self) -> list[str]:
        return self.store.job_ids()

    async def submit(self, input: dict[str, Any], policy: dict[str, Any] | None = None) -> JobStore:
        client = self._client()
        answer = await client.run(input, policy=policy)
        job = check_job_id(answer["id"])
        store = self._create(job, source="submit")
        self._poll(store)
        return store

    async def attach(self, job: str) -> tuple[JobStore, bool]:
        """Start following a job submitted elsewhere; (store, True) when it was new to this relay."""
        self._client()
        check_job_id(job)
        store = self.job(job)
        created = store is None
        if store is None:
            store = self._create(job, source="attach")
        if not store.finished:
            self._poll(store)
        return store, created

    async def cancel(self, job: str) -> dict[str, Any]:
        client = self._client()
        return await client.cancel(job)

    def polling(self, job: str) -> bool:
        return job in self.pollers

    def _create(self, job: str, **meta: Any) -> JobStore:
        store = self._jobs[job] = self.store.create(job, **meta)
        return store

    def _client(self) -> RunPodClient:
        if self.runpod is None:
            raise NotConfigured("this relay has no RunPod URL (PODSTREAM_RUNPOD_URL)")
        return self.runpod

    def _poll(self, store: JobStore) -> None:
        job = store.job
        poller = JobPoller(
            store, self.runpod, wait_ms=self.settings.poll_wait_ms, backoff=self.backoff,
            publish=lambda: self.hub.publish(job),
        )  # fmt: skip
        self.pollers.start(poller)

    # ------------------------------------------------------------------ retention

    def expires_at(self, store: JobStore) -> float | None:
        finished = store.meta.get("finished_at")
        if not finished or self.settings.retention_s <= 0:
            return None
        return float(finished) + self.settings.retention_s

    def sweep(self, now: float | None = None) -> list[str]:
        """Delete finished jobs past their retention; returns their ids."""
        now = time.time() if now is None else now
        deleted = []
        for job in self.store.job_ids():
            if job in self.pollers:
                continue
            store = self.job(job)
            expires = self.expires_at(store) if store is not None else None
            if store is None or expires is None or expires > now:
                continue
            self._jobs.pop(job, None)
            self.hub.forget(job)
            store.close()
            self.store.delete(job)
            deleted.append(job)
        return deleted

    async def _sweep_forever(self) -> None:
        interval = min(3600.0, max(1.0, self.settings.retention_s / 10))
        while True:
            await asyncio.sleep(interval)
            try:
                deleted = self.sweep()
            except Exception:
                log.exception("retention sweep failed")
            else:
                if deleted:
                    log.info("deleted %d expired job(s)", len(deleted))
