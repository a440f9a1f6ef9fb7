"""The emulator's configuration: one frozen value, every limit named here with its production default.

Values marked (unconfirmed) in shared/RUNPOD.md are guesses at what RunPod does; they are still named
here so a test can pin them down or change them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Self

MB = 1_000_000


@dataclass(frozen=True)
class RateLimit:
    """At most `requests` per `window_s` seconds, and at most `concurrent` in flight (0 = unlimited)."""

    requests: int
    window_s: float = 10.0
    concurrent: int = 0


def _production_rate_limits() -> Mapping[str, RateLimit]:
    return MappingProxyType(
        {
            "run": RateLimit(1000),
            "runsync": RateLimit(1000),
            "stream": RateLimit(2000, concurrent=400),
            "status": RateLimit(2000, concurrent=400),
            "status-sync": RateLimit(2000, concurrent=400),  # (unconfirmed) taken to be /status's
            "cancel": RateLimit(100),
        }
    )


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything the emulator does differently from one run to the next.

    Sizes are bytes of the HTTP request body; times are seconds unless the name says `_ms` (RunPod's own
    API speaks milliseconds: `?wait=`, `executionTimeout`, `ttl`, `RUNPOD_PING_INTERVAL`).
    """

    endpoint_id: str = "local"
    # Client side key (`Authorization: Bearer KEY` or the bare key). None: no check.
    api_key: str | None = None
    # Key handed to workers as RUNPOD_AI_API_KEY and expected on every worker request. None: `api_key`.
    worker_api_key: str | None = None

    # Body caps. Over the cap: `/run` and `/runsync` answer `oversize_status`, job-stream and job-done 400.
    max_run_bytes: int = 10 * MB
    max_runsync_bytes: int = 20 * MB
    max_stream_item_bytes: int = 1 * MB
    max_job_done_bytes: int = 20 * MB
    oversize_status: int = 413

    # Client long-polls.
    stream_wait_default_ms: int = 10_000
    stream_wait_min_ms: int = 1_000
    stream_wait_max_ms: int = 300_000
    runsync_wait_default_ms: int = 90_000
    runsync_wait_max_ms: int = 300_000

    # Worker long-polls (the SDK gives up on each after 90 s). (unconfirmed)
    job_take_wait_s: float = 20.0
    job_stop_wait_s: float = 20.0

    # Job lifetime.
    execution_timeout_ms: int = 600_000
    ttl_ms: int = 86_400_000
    ttl_min_ms: int = 10_000
    ttl_max_ms: int = 7 * 86_400_000
    retention_run_s: float = 1800.0
    retention_runsync_s: float = 60.0

    # Workers. A worker holding a job whose last ping is older than the grace makes that job FAILED.
    ping_interval_ms: int = 10_000
    heartbeat_grace_s: float = 60.0  # (unconfirmed)
    gpu: str = "CPU"  # the `?gpu=` query RunPod puts on every worker URL

    rate_limits: Mapping[str, RateLimit] = field(default_factory=_production_rate_limits)

    webhook_attempts: int = 3
    webhook_retry_delay_s: float = 10.0
    webhook_timeout_s: float = 10.0

    # How often deadlines (timeouts, TTL, retention, heartbeats) are checked.
    tick_s: float = 0.2
    # How long a stopping worker gets between SIGTERM and SIGKILL.
    worker_stop_grace_s: float = 5.0
    # Spawned workers that exit are replaced. An exit within `worker_crash_window_s` of starting is a
    # failed start: replacements then back off (exponential, full jitter, from `worker_restart_delay_s`
    # up to `worker_restart_max_delay_s`), and after `worker_max_failed_starts` in a row the emulator
    # stops restarting the worker and reports its last log lines.
    worker_restart_delay_s: float = 1.0
    worker_restart_max_delay_s: float = 30.0
    worker_crash_window_s: float = 30.0
    worker_max_failed_starts: int = 5

    def __post_init__(self) -> None:
        if not self.endpoint_id or "/" in self.endpoint_id:
            raise ValueError(f"endpoint_id must be a non-empty path segment, not {self.endpoint_id!r}")
        for name in ("max_run_bytes", "max_runsync_bytes", "max_stream_item_bytes", "max_job_done_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.ping_interval_ms < 1000:
            # The SDK sleeps RUNPOD_PING_INTERVAL // 1000 seconds: below 1000 it would ping in a busy loop.
            raise ValueError("ping_interval_ms must be at least 1000 (the SDK pings every ms // 1000 s)")
        if self.worker_max_failed_starts < 1:
            raise ValueError("worker_max_failed_starts must be at least 1")
        if self.stream_wait_min_ms > self.stream_wait_max_ms:
            raise ValueError("stream_wait_min_ms must not exceed stream_wait_max_ms")

    @property
    def effective_worker_key(self) -> str | None:
        return self.worker_api_key if self.worker_api_key is not None else self.api_key

    def with_changes(self, **changes: object) -> Self:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def for_tests(cls, **changes: object) -> EmulatorConfig:
        """Production semantics with short clocks: 1 s pings, 3 s heartbeat grace, 2 s worker long-polls."""
        base = cls(
            ping_interval_ms=1000,
            heartbeat_grace_s=3.0,
            job_take_wait_s=2.0,
            job_stop_wait_s=2.0,
            webhook_retry_delay_s=0.2,
            worker_stop_grace_s=3.0,
        )
        return replace(base, **changes)  # type: ignore[arg-type]
