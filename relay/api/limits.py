"""Limits: job submissions per API key per minute (a sliding one-minute window per key), and the process's
file descriptors (how many client connections fit, and how close the relay is to running out)."""

from __future__ import annotations

import math
import os
import resource
import time
from collections import deque
from collections.abc import Callable


class RateLimited(Exception):
    """Over the limit; `retry_after` is the number of seconds until the next call is allowed."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PerKeyRate:
    """At most `limit` calls per `window_s` per key. Memory: one timestamp per allowed call in the window."""

    def __init__(
        self, limit: int, window_s: float = 60.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        self._calls: dict[str, deque[float]] = {}

    def take(self, key: str) -> None:
        """Count one call of `key`, or raise `RateLimited` (the call is then not counted)."""
        now = self.clock()
        calls = self._calls.setdefault(key, deque())
        while calls and calls[0] <= now - self.window_s:
            calls.popleft()
        if len(calls) >= self.limit:
            retry = calls[0] + self.window_s - now
            raise RateLimited(
                f"at most {self.limit} submissions per {self.window_s:g} s per key", max(1, math.ceil(retry))
            )
        calls.append(now)
        if len(self._calls) > 10_000:  # forget idle keys
            for idle in [k for k, c in self._calls.items() if not c or c[-1] <= now - self.window_s]:
                del self._calls[idle]


def fd_limit() -> int:
    """The soft RLIMIT_NOFILE of this process (what `ulimit -n` / `prlimit --nofile` set)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def fd_budget(limit: int, reserve: int) -> int:
    """Client connections allowed at once: the descriptor limit less a reserve for journals, media files,
    RunPod connections and the listening socket (`reserve` 0 = an eighth of the limit, at least 64)."""
    reserve = reserve or max(64, limit // 8)
    return max(8, limit - reserve)


def open_fds() -> int | None:
    """File descriptors this process has open (Linux /proc, else /dev/fd), or None where neither exists."""
    for directory in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(directory)) - 1  # less the one listdir itself opened
        except OSError:
            continue
    return None
