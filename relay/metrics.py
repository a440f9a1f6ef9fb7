"""The relay's Prometheus metrics (`GET /metrics`), one registry per relay.

Counters and histograms are updated where things happen (store, poller's RunPod client, websocket, HTTP);
gauges that describe current state (jobs by status, connections, subscribers, disk usage) are read from the
relay when scraped, so they can never drift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
PREFIX: Final = "podstream_relay"


class RelayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.items = Counter(f"{PREFIX}_items", "Items stored (verified files and refs)", registry=r)
        self.item_errors = Counter(
            f"{PREFIX}_stream_errors", "Error records journaled, by code", ["code"], registry=r
        )
        self.gaps = Counter(f"{PREFIX}_gaps", "Gaps found in jobs' streams (missing seqs)", registry=r)
        self.bytes_in = Counter(
            f"{PREFIX}_bytes_in", "Media bytes received, by source", ["source"], registry=r
        )
        self.bytes_out = Counter(
            f"{PREFIX}_bytes_out", "Bytes sent to clients, by transport", ["transport"], registry=r
        )
        self.polls = Histogram(
            f"{PREFIX}_runpod_request_seconds", "RunPod API call latency, by call", ["call"], registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120),
        )  # fmt: skip
        self.poll_errors = Counter(
            f"{PREFIX}_runpod_errors", "RunPod API calls that failed, by call and status", ["call", "status"],
            registry=r,
        )  # fmt: skip
        self.runpod_throttled = Counter(
            f"{PREFIX}_runpod_throttled", "429 answers from RunPod (each retried)", registry=r
        )
        self.rate_limited = Counter(
            f"{PREFIX}_http_rate_limited", "Requests refused with 429 by the relay, by action", ["action"],
            registry=r,
        )  # fmt: skip
        self.denied = Counter(
            f"{PREFIX}_auth_denied", "Requests and websockets refused by authorization, by code", ["code"],
            registry=r,
        )  # fmt: skip
        self.disconnects = Counter(
            f"{PREFIX}_ws_disconnects", "Websockets the relay ended, by close code (4001 = slow consumer)",
            ["code"], registry=r,
        )  # fmt: skip
        self.deleted = Counter(
            f"{PREFIX}_jobs_deleted", "Jobs deleted, by reason (expired, quota)", ["reason"], registry=r
        )
        self.quota_refused = Counter(
            f"{PREFIX}_quota_refused", "Items refused because the disk quota was full", registry=r
        )

    def observe_runpod(self, call: str, seconds: float, status: int | None) -> None:
        """One RunPod API call (`relay.ingest.runpod.RunPodClient`'s `observe`): its latency, and a throttle
        or an error (by status, or `network`)."""
        self.polls.labels(call).observe(seconds)
        if status == 429:
            self.runpod_throttled.inc()
        if status is None or status >= 400:
            self.poll_errors.labels(call, str(status or "network")).inc()

    def observe(self, state: Callable[[], Iterable[Metric]]) -> None:
        """Register `state` (called at each scrape) for the gauges of the relay's current state."""
        self.registry.register(_StateCollector(state))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, state: Callable[[], Iterable[Metric]]) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        return self._state()

    def describe(self) -> Iterable[Metric]:
        return []


def gauge(name: str, documentation: str, value: float | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, value=value)


def labelled_gauge(name: str, documentation: str, label: str, values: dict[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    """A counter kept by the relay itself (read at each scrape, like the gauges)."""
    return CounterMetricFamily(f"{PREFIX}_{name}", documentation, value=value)
