"""Exponential backoff with full jitter, and `Retry-After`: the one implementation every retry loop uses.

    backoff = Backoff(base_s=0.5, cap_s=30.0)
    delay = backoff.delay(attempt)          # attempt 0 waits up to 0.5 s, 1 up to 1 s, 2 up to 2 s, ...
    delay = backoff.delay(attempt, retry_after=retry_after_seconds(response.headers.get("retry-after")))

The n-th wait in a row (n from 0) is `uniform(0, min(cap_s, base_s * 2**n))` ("full jitter", from AWS's
"Exponential Backoff And Jitter"): clients that failed together do not retry together. A server's
`Retry-After` is a floor under the jittered delay (capped, so a hostile or broken header cannot park a
client for a day).

Users: the CLI's pull and watch (`podstream.puller.RetryPolicy`), the relay's RunPod client and poller
restarts (`relay.ingest.runpod`, `relay.ingest.poller`), the emulator's worker restarts (`podstream.emulator.workers`),
and the worker's uploads of files out of band (`worker.upload`).
Why not tenacity or stamina: both retry *one call* (a decorator or a `for attempt in Retrying()` block).
Our loops are long-lived (a watch reconnects for hours and its failure count resets whenever a record
arrives; a relay poller or a crash-looping worker counts failures across calls), report every wait to an
observer, and take an injected random source so tests are deterministic. What they would replace is the
formula below; the loops would stay.
"""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

#: The longest `Retry-After` honoured, in seconds.
MAX_RETRY_AFTER_S: Final = 120.0


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n (from 0) waits uniform(0, min(cap_s, base_s * 2**n))."""

    base_s: float = 0.5
    cap_s: float = 30.0

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < 0:
            raise ValueError("backoff base_s and cap_s must not be negative")

    def ceiling(self, attempt: int) -> float:
        """The longest wait attempt `attempt` can draw (no jitter)."""
        return min(self.cap_s, math.ldexp(self.base_s, min(max(attempt, 0), 60)))

    def delay(
        self,
        attempt: int,
        rng: Callable[[], float] = random.random,
        *,
        retry_after: float | None = None,
        max_retry_after: float = MAX_RETRY_AFTER_S,
    ) -> float:
        """Seconds to wait before retry `attempt`; at least `retry_after` (up to `max_retry_after`)."""
        delay = rng() * self.ceiling(attempt)
        if retry_after is not None:
            delay = max(delay, min(max(retry_after, 0.0), max_retry_after))
        return delay


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """The delay a `Retry-After` header asks for (delta-seconds or an HTTP date), or None when absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)
