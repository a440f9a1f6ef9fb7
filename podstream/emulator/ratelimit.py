"""Per-route rate limits as RunPod applies them: N requests per sliding window, M in flight; over -> 429."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping

from podstream.emulator.config import RateLimit


class RateLimiter:
    """Single event loop only (the server's). `acquire` says yes or no; a yes must be `release`d."""

    def __init__(self, limits: Mapping[str, RateLimit]) -> None:
        self._limits = dict(limits)
        self._hits: dict[str, deque[float]] = {name: deque() for name in self._limits}
        self._in_flight: dict[str, int] = dict.fromkeys(self._limits, 0)

    def acquire(self, route: str, now: float | None = None) -> bool:
        limit = self._limits.get(route)
        if limit is None:
            return True
        now = time.monotonic() if now is None else now
        hits = self._hits[route]
        while hits and hits[0] <= now - limit.window_s:
            hits.popleft()
        if len(hits) >= limit.requests:
            return False
        if limit.concurrent and self._in_flight[route] >= limit.concurrent:
            return False
        hits.append(now)
        self._in_flight[route] += 1
        return True

    def release(self, route: str) -> None:
        if route in self._in_flight:
            self._in_flight[route] -= 1
