"""Per-route request accounting: counts, statuses and the largest bodies ever seen.

Tests and benchmarks assert caps with it ("no job-stream body ever exceeded 1 MB"), so sizes are the bytes
that actually crossed the socket: the request body as received, the response body as sent. `max_in_flight`
is the most requests of a route handled at once (two relay replicas polling one job's `/stream` show 2).
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
    in_flight: int = 0
    max_in_flight: int = 0
    statuses: Counter[int] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "request_bytes": self.request_bytes,
            "max_request_bytes": self.max_request_bytes,
            "max_response_bytes": self.max_response_bytes,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
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

    def enter(self, route: str) -> None:
        """A request of `route` is being handled (until `leave`): counts toward `max_in_flight`."""
        with self._lock:
            entry = self._routes.setdefault(route, RouteStats())
            entry.in_flight += 1
            entry.max_in_flight = max(entry.max_in_flight, entry.in_flight)

    def leave(self, route: str) -> None:
        with self._lock:
            self._routes[route].in_flight -= 1  # `reset` keeps the entries of requests still in flight

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
            # a request in flight still leaves later: its route keeps counting it, from zero otherwise
            self._routes = {
                name: RouteStats(in_flight=e.in_flight, max_in_flight=e.in_flight)
                for name, e in self._routes.items()
                if e.in_flight
            }
            self._events.clear()
