"""The relay as one object: settings, store, hub, pollers, RunPod client, auth, metrics and live connections.

`Relay.start` reopens every job in the data directory (finished jobs replay from disk; unfinished ones
resume polling) and `Relay.stop` stops pollers and says `bye 4000` to every websocket. The HTTP and websocket
layers (`relay.api.app`, `relay.api.ws`) only translate requests into calls on this object.

Retention (`relay.retention.Retention`): which finished jobs, unclaimed uploads and staged inputs go and
when; it asks this object to delete a job (`remove_job`).

Cluster mode (`cluster` settings with both URLs; docs/cluster.md): the same object on other storage. The
store is a `relay.storage.cluster.cluster_store.ClusterStore` (the job index in Redis, journals in Redis Streams,
items in the bucket) and `replica` (`relay.storage.cluster.replica.Replica`) decides which jobs this replica polls
(by lease), follows the others live, reports whether Redis and the bucket answer, and holds the sweeper's
lease (one retention sweep at a time across the replicas).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from relay import metrics as m
from relay.api.auth import AllowAll, AuthConfigError, Authorizer, KeyAuthorizer, parse_keys, parse_origins
from relay.api.limits import PerKeyRate
from relay.api.links import LinkCodes, LinkStore
from relay.config import ConfigError, RelaySettings
from relay.gauges import RelayGauges
from relay.hub import ChunkCache, Hub
from relay.ingest.poller import JobPoller, PollerSet
from relay.ingest.recovery import GapRecovery, crash_after_drain
from relay.ingest.runpod import Backoff, JobNotFound, RunPodClient
from relay.logs import job as job_log
from relay.retention import Retention
from relay.storage.errors import JobBroken, check_job_id
from relay.storage.input_store import BucketInputs, DiskInputs, InputQuota, InputStore
from relay.storage.job import DONE, ERROR, ITEM, JobHooks, Jobs, JobStore, public
from relay.storage.local.jobs import Store
from relay.storage.quota import DiskQuota

if TYPE_CHECKING:
    from relay.storage.cluster.replica import Replica
    from relay.storage.cluster.settings import ClusterSettings

log = logging.getLogger("podstream.relay")

SECRET_FILE = "token-secret"


class Closable(Protocol):
    async def bye(self, code: int, reason: str) -> None: ...

    @property
    def subscribed(self) -> int: ...


class NotConfigured(Exception):
    """The relay has no RunPod URL: it can replay jobs but not submit or poll them."""


def token_secret(settings: RelaySettings) -> bytes:
    """The configured token secret, or the one kept in the data directory (made on first use, mode 0600)."""
    if settings.token_secret:
        secret = settings.token_secret.encode()
        if len(secret) < 32:
            raise ConfigError("PODSTREAM_TOKEN_SECRET must be at least 32 bytes")
        return secret
    path = Path(settings.data_dir) / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = path.read_bytes().strip()
        if len(secret) < 32:
            raise ConfigError(f"{path} holds a token secret shorter than 32 bytes") from None
        return secret
    secret = secrets.token_urlsafe(48).encode()
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    return secret


def authorizer_from(settings: RelaySettings) -> Authorizer:
    """The authorizer the settings ask for: API keys and tokens, or everything open with `insecure`."""
    origins = parse_origins(settings.allowed_origins)
    if settings.insecure:
        return AllowAll(origins | parse_origins(settings.cors_origins))  # browsers: these and its own only
    text = settings.api_keys
    if settings.api_keys_file:
        try:
            text += "\n" + Path(settings.api_keys_file).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read PODSTREAM_API_KEYS_FILE: {exc}") from None
    try:
        keys = parse_keys(text)
    except AuthConfigError as exc:
        raise ConfigError(f"PODSTREAM_API_KEYS: {exc}") from None
    if not keys:
        raise ConfigError(
            "no API keys configured: set PODSTREAM_API_KEYS (or --api-keys) to the hash of a key "
            "(podstream relay --generate-key makes one), or run with --insecure for local development only"
        )
    return KeyAuthorizer(
        keys, token_secret(settings), audience=settings.token_audience, token_ttl_s=settings.token_ttl_s,
        max_token_ttl_s=settings.max_token_ttl_s, media_url_ttl_s=settings.media_url_ttl_s, origins=origins,
    )  # fmt: skip


def expected_items(input: dict[str, Any]) -> int | None:
    """How many items a job's input asks for: its `items`, times `params.num_images` (outputs per item);
    None when the input does not say (a model's own input, a resend job)."""
    items = input.get("items")
    if not isinstance(items, list) or not items:
        return None
    params = input.get("params")
    per_item = params.get("num_images", 1) if isinstance(params, dict) else 1
    if isinstance(per_item, bool) or not isinstance(per_item, int) or per_item < 1:
        per_item = 1
    return len(items) * per_item


class Relay:
    def __init__(
        self,
        settings: RelaySettings,
        *,
        http_client: httpx.AsyncClient | None = None,
        authorizer: Authorizer | None = None,
        cluster: ClusterSettings | None = None,
    ) -> None:
        self.settings = settings
        self.auth: Authorizer = authorizer or authorizer_from(settings)
        self.metrics = m.RelayMetrics()
        clustered = cluster is not None and cluster.enabled
        # In cluster mode the quota bounds the spool (items on their way to the bucket): deleting finished
        # jobs from the bucket would free none of it, so nothing is evicted for it.
        self.quota = DiskQuota(
            settings.disk_quota_bytes,
            None if clustered else lambda needed: self.retention.evict_from_any_thread(needed),
        )
        hooks = JobHooks(on_commit=self._on_record, on_bytes=self.metrics.bytes_in.labels("runpod").inc)
        #: Cluster mode: this replica's leases, follower and health (None: one relay on local disk).
        self.replica: Replica | None = None
        #: Link codes (relay.api.links): in this process, or in Redis in cluster mode (any replica redeems them).
        self.links: LinkStore = LinkCodes()
        #: Staged job inputs (relay.api.inputs): on local disk, or in the bucket in cluster mode.
        self.inputs: InputStore = DiskInputs(
            Path(settings.data_dir) / "inputs", fsync=settings.fsync == "always"
        )
        self.store: Jobs = Store(
            settings.data_dir, fsync=settings.fsync == "always", tail=settings.tail_records, quota=self.quota,
            hooks=hooks,
        ) if cluster is None or not clustered else self._cluster_store(cluster, hooks)  # fmt: skip
        self.input_quota = InputQuota(settings.input_quota_bytes, self.inputs.measure)
        self.retention = Retention(self, lease=self.replica)
        self.hub = Hub()
        self.backoff = Backoff(settings.backoff_initial_s, settings.backoff_max_s)
        self.pollers = PollerSet(
            settings.max_pollers,
            restart_backoff=self.backoff,
            recovery=GapRecovery.from_settings(settings),
            on_drained=crash_after_drain(settings.test_crash_after_drain),
        )
        self.chunks = ChunkCache(settings.chunk_cache_bytes, settings.chunk_bytes)
        self.submits = PerKeyRate(settings.submits_per_minute)
        self.connections: set[Closable] = set()
        self.sse_streams = 0
        self.started_at = time.time()
        #: True once every job is reopened, until shutdown begins (`/readyz`).
        self.ready = False
        self._jobs: dict[str, JobStore] = {}
        self._own_client = http_client is None and bool(settings.runpod_url)
        self._http = http_client
        self.runpod: RunPodClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._removals: set[asyncio.Task[None]] = set()
        #: The gauges of the relay's state, read at each scrape.
        self.gauges = RelayGauges(self)
        self.metrics.observe(self.gauges.collect)

    def _cluster_store(self, settings: ClusterSettings, hooks: JobHooks) -> Jobs:
        from relay.storage.cluster.cluster import Cluster
        from relay.storage.cluster.cluster_store import ClusterStore
        from relay.storage.cluster.link_codes import RedisLinkCodes
        from relay.storage.cluster.replica import Replica

        spool = Path(self.settings.data_dir) / "spool"
        cluster = Cluster.from_settings(settings, spool_dir=spool)
        self.inputs = BucketInputs(cluster.media, spool / "inputs")
        self.links = RedisLinkCodes(cluster.redis, cluster.keys)
        self.replica = replica = Replica(
            cluster, settings, open_job=self._open_quietly, start_poller=self._poll,
            stop_poller=self._stop_poller, publish=lambda job: self.hub.publish(job), spool=spool,
        )  # fmt: skip
        return ClusterStore(
            cluster, spool, tail=self.settings.tail_records, quota=self.quota, hooks=hooks,
            retention_s=self.settings.retention_s, on_spool_error=replica.spool_failed,
        )  # fmt: skip

    def _open_quietly(self, job: str) -> JobStore | None:
        try:
            return self.job(job)
        except Exception:
            log.exception("cannot open job %s", job, extra=job_log(job))
            return None

    def _stop_poller(self, job: str) -> asyncio.Future[None] | None:
        task = self.pollers._tasks.get(job)  # one job's poller, not the set's shutdown
        if task is not None:
            task.cancel()
        return task

    def not_ready(self) -> str | None:
        """Why this relay cannot take traffic now beyond its own state (cluster mode: Redis, the bucket or
        the local spool failing or not answering in time), or None."""
        return self.replica.problem if self.replica is not None else None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.settings.runpod_url:
            if self._http is None:
                timeout = httpx.Timeout(self.settings.read_timeout_s, connect=self.settings.connect_timeout_s)
                limits = httpx.Limits(max_connections=max(100, self.settings.max_pollers + 20))
                self._http = httpx.AsyncClient(timeout=timeout, limits=limits)
            self.runpod = RunPodClient(
                self.settings.runpod_url, self.settings.runpod_key, self._http,
                retries=self.settings.retries, backoff=self.backoff, read_timeout_s=self.settings.read_timeout_s,
                observe=self.metrics.observe_runpod,
            )  # fmt: skip
        if self.replica is not None:
            (Path(self.settings.data_dir) / "spool").mkdir(parents=True, exist_ok=True)
            await self.replica.start()  # its claim loop takes the unfinished jobs nobody polls
            self.retention.start()
            self.ready = True
            return
        await asyncio.to_thread(self.store.empty_trash)
        self.quota.set_measured(await asyncio.to_thread(self.store.measure))
        for job in self.store.job_ids():
            if self.store.finished_at(job) is not None:
                continue  # opened when first asked for
            try:
                store = self.job(job)
            except JobBroken as exc:  # reported as broken to whoever asks; every other job goes on
                log.warning("%s; leaving it alone", exc, extra=job_log(job))
                continue
            except Exception:
                log.exception("cannot reopen job %s; leaving it alone", job, extra=job_log(job))
                continue
            if store is not None and not store.finished:
                self._poll(store)
        self.retention.start()
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.retention.stop()
        await self.drain()
        await self.pollers.stop(grace_s=self.settings.poll_wait_ms / 1000 + 1.0)
        if self.replica is not None:
            await self.replica.stop()  # after the pollers: no write after the leases are given back
        if self._removals:
            await asyncio.wait(list(self._removals))
        for store in self._jobs.values():
            self.hub.forget(store.job)
            store.close()
        self._jobs.clear()
        if self._own_client and self._http is not None:
            await self._http.aclose()

    async def drain(self, code: int = 4000, reason: str = "server going away") -> None:
        """Say bye to every websocket (they reconnect and resume elsewhere or after the restart)."""
        self.ready = False
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
            if self.replica is not None:
                self.replica.opened(store)
        return store

    def job_ids(self) -> list[str]:
        return self.store.job_ids()

    def public(self, record: dict[str, Any]) -> dict[str, Any]:
        """A journal record as clients see it: no `_` fields, the relay's media URL signed."""
        out = public(record)
        url = out.get("url")
        if out["k"] == ITEM and isinstance(url, str) and url.startswith("/"):
            out["url"] = self.auth.sign(url)
        return out

    async def submit(
        self, input: dict[str, Any], policy: dict[str, Any] | None = None, **meta: Any
    ) -> JobStore:
        client = self._client()
        answer = await client.run(input, policy=policy)
        job = check_job_id(answer["id"])
        store = self._create(job, source="submit", expected_items=expected_items(input), **meta)
        await self._start_polling(store)
        log.info("submitted job %s", job, extra=job_log(job))
        return store

    async def attach(self, job: str, **meta: Any) -> tuple[JobStore, bool]:
        """Start following a job submitted elsewhere; (store, True) when it was new to this relay.

        A job new to the relay is looked up on RunPod (`/status`) first: one RunPod does not know raises
        `JobNotFound` (404) and nothing is created."""
        client = self._client()
        check_job_id(job)
        store = self.job(job)
        created = store is None
        if store is None:
            try:
                await client.status(job)
            except JobNotFound:
                raise JobNotFound(f"RunPod does not know job {job}: nothing to attach to", 404) from None
            store = self.job(job)  # attached meanwhile by another request?
            created = store is None
        if store is None:
            store = self._create(job, source="attach", **meta)
        if not store.finished:
            await self._start_polling(store)
        return store, created

    async def cancel(self, job: str) -> dict[str, Any]:
        client = self._client()
        return await client.cancel(job)

    def polling(self, job: str) -> bool:
        return job in self.pollers

    def _create(self, job: str, **meta: Any) -> JobStore:
        store = self._jobs[job] = self.store.create(job, **meta)
        return store

    async def _start_polling(self, store: JobStore) -> None:
        """Poll the job here (cluster mode: if this replica wins its lease; else another one polls it)."""
        if self.replica is not None:
            await self.replica.poll(store)
        else:
            self._poll(store)

    def _on_record(self, job: str, record: dict[str, Any]) -> None:
        kind = record["k"]
        if kind == ITEM:
            self.metrics.items.inc()
        elif kind == ERROR:
            code = str(record.get("code"))
            self.metrics.item_errors.labels(code).inc()
            if code == "gap":
                self.metrics.gaps.inc()
            if code == "quota_exceeded":
                self.metrics.quota_refused.inc()
        elif kind == DONE:
            status = record.get("status")
            log.info("job %s finished: %s", job, status, extra=job_log(job, status=status))
            replica, loop = self.replica, self._loop
            if replica is not None and loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(replica.ended, job)  # commits run in the poller's thread

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

    def open_job(self, job: str) -> JobStore | None:
        """The job's store if it is open in this process (None: not opened yet, or not known)."""
        return self._jobs.get(job)

    def deletable(self, job: str) -> bool:
        """Finished, not polled and not being read: retention may delete it."""
        if job in self.pollers:
            return False
        store = self._jobs.get(job)
        return store is None or (store.finished and store.readers == 0)

    def expires_at(self, store: JobStore) -> float | None:
        return self.retention.expires_at(store.meta)

    def remove_job(self, job: str, reason: str) -> bool:
        """Delete the job: gone for every new request at once, its files removed in a thread."""
        try:
            target = self.store.trash(job)
        except OSError:
            log.exception("cannot delete job %s", job, extra=job_log(job))
            return False
        store = self._jobs.pop(job, None)
        if store is not None:
            store.retire()
        self.hub.forget(job)
        self.quota.forget(job)
        self.gauges.forget(job)
        self.metrics.deleted.labels(reason).inc()
        if target is not None:
            task = asyncio.ensure_future(asyncio.to_thread(self.store.remove, target))
            self._removals.add(task)
            task.add_done_callback(self._removals.discard)
        log.info("deleted job %s (%s)", job, reason, extra=job_log(job, reason=reason))
        return target is not None
