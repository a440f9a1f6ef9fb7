"""The seams between the relay and its storage: small structural interfaces, two implementations each.

Local disk (`relay.storage.local`): `Journal`, `RecordLog`, `Store`. Cluster mode (`relay.storage.cluster`):
`RedisJournal`, `RedisIngestLog`, `RedisJobIndex`, `S3MediaStore`, `RedisLeases`, `ClusterStore`. One job's
store is `relay.storage.job.JobStore`, built on a journal and an ingest log of these; the relay outside
`relay/storage/` reaches storage through that class and these protocols only (tests/relay/test_imports.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol


class JournalBackend(Protocol):
    """A job's public event log: records with a dense `seq` from 1, one writer, any number of readers.

    `extend` assigns seqs (not yet visible), `commit` makes them durable and visible, in that order
    (persist, then publish); `read` only ever returns committed records."""

    head: int
    published: int
    damaged: bool

    def load(self) -> Iterator[dict[str, Any]]: ...

    def extend(self, entries: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]: ...

    def commit(self) -> int: ...

    def read(self, after: int, limit: int = 256) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...


class IngestLog(Protocol):
    """The ingest log: every envelope the Assembler accepted, minus its bytes, in order. `damage` lists
    (offset, bytes) skipped as damaged when it was read back; `quarantined`, where a damaged file was kept."""

    damage: list[tuple[int, int]]
    quarantined: Path | None

    def append(self, records: list[dict[str, Any]]) -> Any: ...

    def sync(self) -> None: ...

    def scan(self) -> Iterator[tuple[int, dict[str, Any]]]: ...

    def close(self) -> None: ...


class JobIndex(Protocol):
    """Which jobs exist, their metadata, and when each finished one expires."""

    def create(self, job: str, meta: dict[str, Any]) -> bool: ...

    def meta(self, job: str) -> dict[str, Any] | None: ...

    def update(self, job: str, meta: dict[str, Any]) -> None: ...

    def job_ids(self) -> list[str]: ...

    def expired(self, now: float) -> list[str]: ...

    def delete(self, job: str) -> None: ...


@dataclass(frozen=True)
class StoredObject:
    """A media object as the store holds it (verified against the record before it was published)."""

    key: str
    size: int
    sha256: str


class MediaStore(Protocol):
    """Media files of jobs: written whole and verified before their record is published, read by range."""

    def read_range(self, key: str, offset: int, length: int) -> bytes: ...

    def stat(self, key: str) -> StoredObject | None: ...

    def delete_job(self, job: str) -> int: ...


#: How long a lease lasts without renewal; a dead holder's jobs are taken over within about this.
DEFAULT_LEASE_TTL_S: Final = 10.0


@dataclass(frozen=True)
class Lease:
    """The right to poll (and append to) one job, until `expires` unless renewed. `token` grows with each
    new holder: a write carrying an older token is refused (fencing)."""

    name: str
    holder: str
    token: int


class Leases(Protocol):
    def acquire(self, name: str) -> Lease | None: ...

    def renew(self, lease: Lease) -> bool: ...

    def release(self, lease: Lease) -> bool: ...


class MediaSource(Protocol):
    """An item's bytes somewhere other than a local file (cluster mode: an object in the bucket). Its
    `str()` names it (the chunk cache's key); `read` blocks (it runs in a thread) and raises OSError."""

    size: int

    def read(self, offset: int, length: int) -> bytes: ...


class StoreSink(Protocol):
    """A `podstream.wire.ItemSink` made by a job store: `replaying` is set while the poller replays its
    ingest log after a restart (writes are ignored: the bytes were stored before) and cleared once live."""

    replaying: bool

    def write(self, offset: int, data: bytes) -> None: ...

    def finish(self, sha256: str) -> tuple[bool, Any]: ...

    def abort(self) -> None: ...
