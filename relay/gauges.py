"""The gauges of the relay's current state, read from the relay when `/metrics` is scraped (so they can never
drift): jobs by status, pollers, connections, subscribers, disk usage and quota, readiness, the chunk cache."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sized
from typing import Protocol

from prometheus_client.core import Metric

from relay import metrics as m
from relay.config import RelaySettings
from relay.hub import ChunkCache
from relay.storage.job import Jobs, JobStore
from relay.storage.quota import DiskQuota


class Subscribed(Protocol):
    @property
    def subscribed(self) -> int: ...


class GaugeHost(Protocol):
    """What the gauges read of the relay."""

    settings: RelaySettings
    store: Jobs
    quota: DiskQuota
    chunks: ChunkCache
    sse_streams: int
    ready: bool

    @property
    def connections(self) -> Collection[Subscribed]: ...

    @property
    def pollers(self) -> Sized: ...

    def open_job(self, job: str) -> JobStore | None:
        """The job's store if it is open in this process (not opening it)."""
        ...


class RelayGauges:
    def __init__(self, host: GaugeHost) -> None:
        self.host = host
        #: Finished jobs' statuses, read once from their metadata (they do not change).
        self._finished: dict[str, str] = {}

    def status(self, job: str) -> str:
        store = self.host.open_job(job)
        if store is not None:
            return store.status or "UNKNOWN"
        status = self._finished.get(job)
        if status is None:
            meta = self.host.store.meta(job)
            status = self._finished[job] = str(meta.get("status") or "UNKNOWN")
        return status

    def forget(self, job: str) -> None:
        """The job was deleted."""
        self._finished.pop(job, None)

    def collect(self) -> Iterable[Metric]:
        host = self.host
        statuses: dict[str, float] = {}
        for job in host.store.job_ids():
            status = self.status(job)
            statuses[status] = statuses.get(status, 0) + 1
        yield m.labelled_gauge("jobs", "Jobs in the data directory, by RunPod status", "status", statuses)
        yield m.gauge("pollers", "Jobs being polled now", len(host.pollers))
        yield m.gauge("ws_connections", "Open websockets", len(host.connections))
        subscribers = {
            "ws": float(sum(c.subscribed for c in host.connections)),
            "sse": float(host.sse_streams),
        }
        yield m.labelled_gauge("subscribers", "Live subscriptions, by transport", "transport", subscribers)
        yield m.gauge("disk_usage_bytes", "Bytes held by jobs in the data directory", host.quota.used)
        yield m.gauge("disk_quota_bytes", "The disk quota (0 = none)", host.settings.disk_quota_bytes)
        yield m.gauge("ready", "1 when the relay is ready for traffic", float(host.ready))
        chunks = host.chunks
        yield m.counter("chunk_cache_hits", "Chunk frames sent without a read of their own", chunks.hits)
        yield m.counter("chunk_cache_misses", "Chunk frames read from disk and encoded", chunks.misses)
        yield m.gauge("chunk_cache_bytes", "Bytes of encoded chunk frames held", chunks.bytes)
