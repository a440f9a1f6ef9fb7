"""Per-route request accounting: counts, statuses and the largest bodies ever seen.

Tests and benchmarks assert caps with it ("no job-stream body ever exceeded 1 MB"), so sizes are the bytes
that actually crossed the socket: the request body as received, the response body as sent.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RouteStats:
    requests: int = 0
    request_bytes: int = 0
    max_request_bytes: int = 0
    max_response_bytes: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "request_bytes": self.request_bytes,
            "max_request_bytes": self.max_request_bytes,
            "max_response_bytes": self.max_response_bytes,
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
        }


class RequestStats:
    """Thread-safe: the server records from its loop, tests read from theirs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, RouteStats] = {}
        self._events: Counter[str] = Counter()

    def record(self, route: str, status: int, request_bytes: int, response_bytes: int) -> None:
        with self._lock:
            entry = self._routes.setdefault(route, RouteStats())
            entry.requests += 1
            entry.request_bytes += request_bytes
            entry.max_request_bytes = max(entry.max_request_bytes, request_bytes)
            entry.max_response_bytes = max(entry.max_response_bytes, response_bytes)
            entry.statuses[status] += 1

    def count(self, event: str, n: int = 1) -> None:
        """Count something that is not a request: `stream_items_dropped`, `webhooks_failed`, ..."""
        with self._lock:
            self._events[event] += n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "routes": {name: entry.as_dict() for name, entry in sorted(self._routes.items())},
                "events": dict(sorted(self._events.items())),
            }

    def reset(self) -> None:
        with self._lock:
            self._routes.clear()
            self._events.clear()
