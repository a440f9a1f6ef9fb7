"""The disk quota: bytes held by each job against one limit, shared by every job of a relay.

On local disk it bounds the data directory (items count from their reservation until they are deleted);
in cluster mode it bounds the local spool (items count while they are on their way to the bucket).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from relay.storage.errors import QuotaExceeded


class DiskQuota:
    """Bytes held by each job against a global quota (thread-safe; `limit` 0 = no quota).

    A job's bytes are what `measure` last found on disk plus the items reserved since. `reserve` calls
    `evict(bytes_needed)` (which deletes old finished jobs and returns the bytes it freed) when a reservation
    does not fit, then tries once more.
    """

    def __init__(self, limit: int = 0, evict: Callable[[int], int] | None = None) -> None:
        self.limit = limit
        self.evict = evict
        self._lock = threading.Lock()
        self._measured: dict[str, int] = {}
        self._reserved: dict[str, int] = {}  # items being written
        self._stored: dict[str, int] = {}  # items stored since the last `set_measured`

    def _used(self) -> int:
        return sum(self._measured.values()) + sum(self._reserved.values()) + sum(self._stored.values())

    @property
    def used(self) -> int:
        with self._lock:
            return self._used()

    def job_bytes(self, job: str) -> int:
        with self._lock:
            return self._measured.get(job, 0) + self._reserved.get(job, 0) + self._stored.get(job, 0)

    def _fits(self, nbytes: int) -> bool:
        return self.limit <= 0 or self._used() + nbytes <= self.limit

    def reserve(self, job: str, nbytes: int) -> None:
        for attempt in range(2):
            with self._lock:
                if self._fits(nbytes):
                    self._reserved[job] = self._reserved.get(job, 0) + nbytes
                    return
                needed = self._used() + nbytes - self.limit
            if attempt == 0 and self.evict is not None:
                self.evict(needed)
        raise QuotaExceeded(
            f"the relay's disk quota ({self.limit} bytes) is full: {nbytes} more bytes do not fit"
            + (" even after deleting every finished job that could go" if self.evict is not None else "")
        )

    def release(self, job: str, nbytes: int, *, stored: bool = False) -> None:
        """An item's reservation ends: abandoned (its bytes are gone), or `stored` (they stay on disk)."""
        with self._lock:
            left = self._reserved.get(job, 0) - nbytes
            if left > 0:
                self._reserved[job] = left
            else:
                self._reserved.pop(job, None)
            if stored:
                self._stored[job] = self._stored.get(job, 0) + nbytes

    def set_measured(self, sizes: dict[str, int]) -> None:
        """What `Store.measure` found on disk (stored items are in it now; items being written count in
        full until they end, so their partial bytes count twice meanwhile: on the safe side)."""
        with self._lock:
            self._measured = dict(sizes)
            self._stored.clear()
            self._reserved = {job: n for job, n in self._reserved.items() if job in sizes}

    def forget(self, job: str) -> int:
        with self._lock:
            return self._measured.pop(job, 0) + self._reserved.pop(job, 0) + self._stored.pop(job, 0)
