"""`Journal`: a job's public event log on local disk, records with a dense `seq` from 1.

A `RecordLog` (append-only frames that survive damage) plus a small in-memory tail of recent records and an
offset index for older ones. Readers only ever see records up to `published`, which the single writer (the
job's poller) advances after the records are durable ("persist, then publish").
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from relay.storage.job import KINDS
from relay.storage.local.records import RecordLog


class Journal:
    """A job's records, `seq` dense from 1. Written by one poller; read by any number of cursors."""

    def __init__(self, path: Path, *, fsync: bool = True, tail: int = 1024) -> None:
        self.log = RecordLog(path, fsync=fsync)
        self._offsets = array("q")  # offsets[seq - 1]
        self._tail: list[dict[str, Any]] = []
        self._tail_start = 1  # seq of _tail[0]
        self._tail_max = max(1, tail)
        self.head = 0  # last seq written
        self.published = 0  # last seq readers may see
        self.last: dict[str, Any] | None = None
        #: Set by `load` when records are missing or out of place (see `relay.storage.local.repair`).
        self.damaged = False

    def load(self) -> Iterator[dict[str, Any]]:
        """Read the journal back; yields its records while they are in order. Call once, first.

        A record out of place (a hole in `seq` left by damage, or one not in sequence) stops the yielding
        and sets `damaged`: the journal then needs rebuilding (`relay.storage.local.repair`), which reads it again."""
        self.damaged = False
        for offset, record in self.log.scan():
            if self.damaged:
                continue
            if record.get("seq") != self.head + 1 or record.get("k") not in KINDS:
                self.damaged = True
                continue
            self._offsets.append(offset)
            self.head += 1
            self._remember(record)
            yield record
        self.damaged = self.damaged or bool(self.log.damage)
        self.published = self.head
        self._trim()

    @property
    def tail_max(self) -> int:
        return self._tail_max

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        return self.extend([(kind, fields)])[0]

    def extend(self, entries: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Append records (not yet published). `fields` must not contain `seq` or `k`."""
        if not entries:
            return []
        records: list[dict[str, Any]] = []
        for kind, fields in entries:
            if kind not in KINDS:
                raise ValueError(f"unknown record kind {kind!r}")
            records.append({"seq": self.head + len(records) + 1, "k": kind, **fields})
        offsets = self.log.append(records)
        for offset, record in zip(offsets, records, strict=True):
            self._offsets.append(offset)
            self.head += 1
            self._remember(record)
        return records

    def _remember(self, record: dict[str, Any]) -> None:
        self._tail.append(record)
        self.last = record

    def commit(self) -> int:
        """Make everything appended durable (per the fsync policy) and visible to readers; returns the head."""
        if self.published != self.head:
            self.log.sync()
            self.published = self.head
            self._trim()
        return self.published

    def _trim(self) -> None:
        # Only on the publishing side, so a reader's slice of the tail never shifts under it.
        excess = len(self._tail) - 2 * self._tail_max
        if excess > 0:
            drop = len(self._tail) - self._tail_max
            del self._tail[:drop]
            self._tail_start += drop

    def read(self, after: int, limit: int = 256) -> list[dict[str, Any]]:
        """Published records with seq > `after`, at most `limit`, in order."""
        end = min(self.published, after + limit)
        if end <= after:
            return []
        start = after + 1
        if start >= self._tail_start:
            base = self._tail_start
            return self._tail[start - base : end - base + 1]
        return self.log.read_at(self._offsets[start - 1], end - start + 1)

    def close(self) -> None:
        self.log.close()
