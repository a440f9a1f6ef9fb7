"""A job's journal and ingest log in Redis, with the surface of `relay.storage.local.store.Journal` / `RecordLog`.

The journal is one fenced stream per job (`relay.storage.cluster.fenced_stream`): stream id `<seq>-0` is the
record's seq, so the dense cursor of the protocol is Redis's own id. Writing works as on disk: `extend`
numbers records (invisible), `commit` appends them in one fenced script call (persisted per Redis's AOF
policy) and only then are they `published`. A replica that does not poll the job opens it read-only
(`token=None`) and moves `published` forward with `refresh` when Redis wakes it (`wait`).

Recent records are kept in memory (`tail`), so N subscribers of a replica reading the same records cost one
XRANGE, not N.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from relay.errors import StopPolling
from relay.storage.cluster.fenced_stream import FencedStream
from relay.storage.job import KINDS


class ReadOnly(StopPolling):
    """This replica does not hold the job's lease: it cannot append to its journal."""


class RedisJournal:
    def __init__(self, stream: FencedStream, *, token: int | None, tail: int = 1024) -> None:
        self.stream = stream
        #: The fencing token of this replica's lease of the job (None: read-only).
        self.token = token
        self.head = 0
        self.published = 0
        self.last: dict[str, Any] | None = None
        self.damaged = False
        self._pending: list[dict[str, Any]] = []
        self._tail: list[dict[str, Any]] = []
        self._tail_start = 1
        self._tail_max = max(1, tail)

    @property
    def tail_max(self) -> int:
        return self._tail_max

    def load(self) -> Iterator[dict[str, Any]]:
        """Read the journal back from Redis (call once, first); yields its records in order."""
        for seq, record in self.stream.scan():
            if seq != self.head + 1 or record.get("seq") != seq or record.get("k") not in KINDS:
                self.damaged = True  # cannot happen through `commit`; someone wrote to the key by hand
                break
            self._remember(record)
            self.head = seq
            yield record
        self.published = self.head
        self._trim()

    def append(self, kind: str, **fields: Any) -> dict[str, Any]:
        return self.extend([(kind, fields)])[0]

    def extend(self, entries: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        if self.token is None and entries:
            raise ReadOnly("this replica does not hold the job's lease")
        records: list[dict[str, Any]] = []
        for kind, fields in entries:
            if kind not in KINDS:
                raise ValueError(f"unknown record kind {kind!r}")
            records.append({"seq": self.head + len(records) + 1, "k": kind, **fields})
        self._pending.extend(records)
        self.head += len(records)
        return records

    def commit(self) -> int:
        """Append what `extend` numbered (fenced: raises `Fenced` when this replica lost the job), then
        publish it. On a refusal nothing of the batch is in Redis and nothing is published."""
        if self._pending:
            assert self.token is not None
            try:
                self.stream.append(self.token, self.published + 1, self._pending)
            except BaseException:
                self.head = self.published
                self._pending.clear()
                raise
            for record in self._pending:
                self._remember(record)
            self._pending.clear()
            self.published = self.head
            self._trim()
        return self.published

    def refresh(self) -> int:
        """Read-only replicas: take in the records other replicas committed since; returns `published`."""
        while entries := self.stream.read(self.published, 1024):
            for seq, record in entries:
                self._remember(record)
                self.published = self.head = seq
        self._trim()
        return self.published

    def wait(self, block_ms: int) -> int:
        """Block (XREAD BLOCK) until a record past `published` exists, take it in; returns `published`."""
        if self.stream.wait(self.published, block_ms) > self.published:
            self.refresh()
        return self.published

    def _remember(self, record: dict[str, Any]) -> None:
        if not self._tail:
            self._tail_start = int(record["seq"])
        self._tail.append(record)
        self.last = record

    def _trim(self) -> None:
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
        if self._tail and start >= self._tail_start:
            base = self._tail_start
            return self._tail[start - base : end - base + 1]
        return [record for _seq, record in self.stream.read(after, end - after)]

    def close(self) -> None:
        self._tail.clear()


class RedisIngestLog:
    """The ingest log (`wire.log` on disk) as a fenced stream: `append` buffers, `sync` writes the batch.

    `relay.storage.local.store.JobStore.commit` syncs the ingest log before the journal, so what a subscriber saw can be
    rebuilt from it (by the replica that takes the job over) exactly as after a restart on disk."""

    def __init__(self, stream: FencedStream, *, token: int | None) -> None:
        self.stream = stream
        self.token = token
        self.damage: list[tuple[int, int]] = []  # a stream has no torn tails (RecordLog's field)
        self.quarantined: Path | None = None
        self._count = stream.last()
        self._pending: list[dict[str, Any]] = []

    def append(self, records: list[dict[str, Any]]) -> list[int]:
        if self.token is None:
            raise ReadOnly("this replica does not hold the job's lease")
        first = self._count + len(self._pending) + 1
        self._pending.extend(records)
        return list(range(first, first + len(records)))

    def sync(self) -> None:
        if self._pending:
            assert self.token is not None
            try:
                self._count = self.stream.append(self.token, self._count + 1, self._pending)
            finally:
                self._pending.clear()

    def scan(self) -> Iterator[tuple[int, dict[str, Any]]]:
        yield from self.stream.scan()

    def close(self) -> None:
        self._pending.clear()
