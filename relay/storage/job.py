"""One job's storage, whichever peer holds it: the seam between the relay and its storage.

`JobStore` keeps what both peers share: the job's summaries (status, items, errors, done, result), the
journal's "persist, then publish" order (`record` appends unpublished, `commit` syncs the ingest log, then
the journal, then applies and announces), readers, and the quota refusals. Where the bytes live is the
peer's: `relay.storage.local.store.DiskJobStore` (journal and ingest log files, media under the job's
directory) and `relay.storage.cluster.job_store.ClusterJobStore` (fenced Redis Streams, media in the
bucket). Each gets its journal and ingest log in its constructor (typed by `relay.storage.protocols`), and
answers the same questions about media and uploads; the rest of the relay (api, ingest, hub) reads only
this module and the protocols, never a peer.

Record kinds, job ids and the storage errors live here too: they are the journal's contract.
Record fields starting with `_` are the relay's own (e.g. `_file`, the media file of an `item` record) and
are stripped before a record leaves the relay (`public`).
"""

from __future__ import annotations

import abc
import contextlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, Final, Protocol

from podstream.wire import ItemRef
from relay.storage.errors import QuotaExceeded, check_job_id
from relay.storage.protocols import IngestLog, JournalBackend, MediaSource, StoreSink
from relay.storage.quota import DiskQuota


class Kind(StrEnum):
    """A journal record's kind (its `k`), as docs/protocol.md lists them."""

    STATUS = "status"
    PROGRESS = "progress"
    ITEM = "item"
    ERROR = "error"
    RESULT = "result"  # a wrapped handler's value, files as {"$file": i} (relay/ingest/results.py)
    DONE = "done"


STATUS: Final = Kind.STATUS
PROGRESS: Final = Kind.PROGRESS
ITEM: Final = Kind.ITEM
ERROR: Final = Kind.ERROR
DONE: Final = Kind.DONE
RESULT: Final = Kind.RESULT
KINDS: Final = frozenset(Kind)

#: The largest record a journal or ingest log holds (a result page and its record fit, see
#: relay/ingest/results.py).
MAX_RECORD_BYTES: Final = 8 * 1024 * 1024

#: Error codes the journal's own repair writes: a record lost past repair (one per lost seq), and the
#: summary of a rebuild.
LOST_RECORD: Final = "lost_record"
JOURNAL_DAMAGED: Final = "journal_damaged"

#: A job's folder of files uploaded by a worker (`PUT /v1/uploads`), waiting for their item's `ref`.
UPLOADS: Final = "uploads"
HEX64: Final = re.compile(r"^[0-9a-f]{64}$")


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The record as clients see it: without the relay's own `_` fields."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


@dataclass(frozen=True)
class JobHooks:
    """What the relay hears from every job's store (metrics, fan-out), given to the store at construction."""

    #: Called with the job and each journal record as it becomes visible.
    on_commit: Callable[[str, dict[str, Any]], None] | None = None
    #: Called with the bytes of media written.
    on_bytes: Callable[[int], None] | None = None


class JobStore(abc.ABC):
    """One job: its journal, ingest log, metadata, summaries and media (where, is the peer's part).

    Opened by a job collection (`relay.storage.protocols.Jobs`); written by the job's one poller; read by
    any number of subscribers and HTTP requests."""

    #: Items half-received before this process took the job over were spooled by another process, which
    #: may be gone: after replaying the ingest log, the poller forgets them (gap recovery asks for them
    #: again) instead of finishing them without their first bytes. True in cluster mode.
    partial_items_lost: ClassVar[bool] = False

    def __init__(
        self,
        directory: Path,
        job: str,
        *,
        journal: JournalBackend,
        wire: IngestLog,
        fsync: bool,
        quota: DiskQuota | None = None,
        hooks: JobHooks | None = None,
    ) -> None:
        self.job = check_job_id(job)
        #: The job's local directory: its files on local disk; its spool (and received uploads) in cluster mode.
        self.dir = directory
        self.media = self.dir / "media"
        self.fsync = fsync
        self.journal = journal
        self.wire = wire
        self.quota = quota or DiskQuota()
        self.hooks = hooks or JobHooks()
        self.readers = 0
        self.retired = False
        #: Items refused for the disk quota: item -> message (their end is reported as `quota_exceeded`).
        self.refused: dict[int, str] = {}
        self.meta: dict[str, Any] = {}
        # Summaries kept current as records are appended (used by the HTTP API and the poller).
        self.status = ""
        self.items: dict[int, dict[str, Any]] = {}  # latest `item` record per item index
        self.failed_items: set[int] = set()  # items with an `error` record (of the current run)
        self.errors = 0
        self.done: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None  # the current run's `result` record, if one came
        self.closed = False
        self._pending: list[dict[str, Any]] = []
        #: Media known to match their record in this process (stored by it, or checked once).
        self._verified: set[str] = set()

    # ------------------------------------------------------------------ the peer's part

    @abc.abstractmethod
    def open(self, *, meta: dict[str, Any] | None = None, stored: dict[str, Any] | None = None) -> JobStore:
        """A new job (`meta`, written) or an existing one (`stored`, its metadata as read); loads the journal."""

    @abc.abstractmethod
    def write_meta(self, meta: dict[str, Any]) -> None:
        """Replace the job's metadata."""

    @abc.abstractmethod
    def media_sink(
        self, directory: Path, item: int, id: str, mime: str, size: int, *, replaying: bool
    ) -> StoreSink:
        """The sink of one item's bytes, its size reserved against the disk quota first (`_reserve`)."""

    @abc.abstractmethod
    def media_dir(self, run: int) -> Path:
        """Where the items of run `run` (1 = the first) are written."""

    @abc.abstractmethod
    def media_path(self, record: dict[str, Any]) -> Path | None:
        """The local file of an `item` record, or None (a ref, or media held elsewhere: see `object_key`)."""

    @abc.abstractmethod
    def check_media(self, record: dict[str, Any]) -> Path | MediaSource | None:
        """The verified media of an `item` record: a local file or a ranged source, None for a ref.
        Blocking. Raises `MediaGone` (missing or damaged) or `MediaRetry` (a passing failure)."""

    def object_key(self, record: dict[str, Any]) -> str | None:
        """The bucket key of an `item` record's object, where media lives in a bucket; None here."""
        return None

    @abc.abstractmethod
    def claim_upload(self, run: int, ref: ItemRef) -> Path | PurePosixPath | None:
        """The `ref` of an item uploaded to the relay (`PUT /v1/uploads`) arrived: its upload becomes the
        item's media in run `run`, named as a streamed item's (the record's `_file`). None when no matching
        upload is held (the ref points elsewhere). Idempotent. Blocking."""

    def upload_path(self, item: int, sha256: str) -> Path:
        """Where a verified upload of `item` with digest `sha256` is received, and waits for its `ref`."""
        return self.dir / UPLOADS / f"{item:05d}-{sha256}.bin"

    def stash_upload(self, path: Path, item: int, sha256: str, size: int) -> None:
        """A verified upload, received into `path`: keep it where `claim_upload` finds it. On local disk it
        is there already. Blocking."""
        return None

    # ------------------------------------------------------------------ shared

    def _reserve(self, item: int, size: int) -> str | None:
        """Reserve an item's size against the quota; the refusal's message when it does not fit (the item
        then ends as `quota_exceeded`)."""
        try:
            self.quota.reserve(self.job, size)
        except QuotaExceeded as exc:
            refused = self.refused[item] = f"item {item} ({size} bytes) was not stored: {exc}"
            return refused
        return None

    def _load(self) -> None:
        for record in self.journal.load():
            self._apply(record)

    def reset_summaries(self) -> None:
        """Forget the summaries (before the journal is read again from the start)."""
        self.status = ""
        self.items = {}
        self.failed_items = set()
        self.errors = 0
        self.done = None
        self.result = None

    def record(self, entries: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Append records to the journal (unpublished until `commit`) and update the summaries."""
        if self.refused:
            entries = [self._quota_error(kind, fields) for kind, fields in entries]
        records = self.journal.extend(entries)
        self._pending.extend(records)
        return records

    def _quota_error(self, kind: str, fields: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """An item refused for the disk quota ends as an `error` record, not as a stored item."""
        item = fields.get("item")
        if kind == ITEM and isinstance(item, int) and item in self.refused:
            return ERROR, {"item": item, "code": "quota_exceeded", "message": self.refused.pop(item)}
        return kind, fields

    def sync_media(self) -> None:
        """Make durable the media of the records about to be committed that is not yet (on local disk: the
        directories files were renamed into). Called by `commit` first."""
        return None

    def commit(self) -> int:
        """Make the appended records durable and visible (journal readers and the summaries).

        One group commit, in this order: the media the records name (`sync_media`), the ingest log (a
        record a subscriber saw must be rebuildable from it), the journal; then the records are published.
        Nothing of the logs reaches the disk before this (`RecordLog.append` buffers), so no record is
        durable before the bytes it names."""
        if self.journal.published != self.journal.head:
            self.sync_media()
            self.wire.sync()
        head = self.journal.commit()
        for record in self._pending:
            self._apply(record)
            name = record.get("_file")
            if record["k"] == ITEM and isinstance(name, str):
                self._verified.add(name)  # verified as it was stored (MediaSink, or an upload's sha256)
            if self.hooks.on_commit is not None:
                self.hooks.on_commit(self.job, record)
        self._pending.clear()
        if self.done is not None and not self.meta.get("finished_at"):
            self.write_meta({**self.meta, "finished_at": time.time(), "status": self.status})
        return head

    def _apply(self, record: dict[str, Any]) -> None:
        kind = record["k"]
        if kind == STATUS:
            self.status = record["status"]
        elif kind == ITEM:
            self.items[record["item"]] = record
        elif kind == ERROR:
            code = record.get("code")
            if code == "restarted":
                self.items.clear()
                self.failed_items.clear()
                self.errors = 0
                self.result = None
            elif code not in ("duplicate", LOST_RECORD):  # a lost record's error is `journal_damaged`
                self.errors += 1
                if isinstance(record.get("item"), int):
                    self.failed_items.add(record["item"])
        elif kind == RESULT:
            self.result = record
        elif kind == DONE:
            self.done = record
            self.status = record["status"]

    @property
    def finished(self) -> bool:
        return self.done is not None

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Hold the job's files open while reading (a retired store closes when its last reader is done)."""
        self.readers += 1
        try:
            yield
        finally:
            self.readers -= 1
            if self.retired and self.readers == 0:
                self.close()

    def retire(self) -> None:
        """The job is being deleted: close now, or when its last reader is done."""
        self.retired = True
        if self.readers == 0:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.journal.close()
            self.wire.close()


class Jobs(Protocol):
    """A relay's jobs: create, open, list and delete them (local: the data directory; cluster: the index)."""

    root: Path

    def exists(self, job: str) -> bool: ...

    def create(self, job: str, **meta: Any) -> JobStore: ...

    def open(self, job: str) -> JobStore: ...

    def read_meta(self, job: str) -> dict[str, Any]: ...

    def meta(self, job: str) -> dict[str, Any]: ...

    def finished_at(self, job: str) -> float | None: ...

    def measure(self) -> dict[str, int]: ...

    def job_ids(self) -> list[str]: ...

    def due(self, now: float) -> list[str]: ...

    def trash(self, job: str) -> Path | None: ...

    def empty_trash(self) -> None: ...

    def remove(self, directory: Path) -> None: ...

    def delete(self, job: str) -> None: ...


def seq_ranges(seqs: list[int]) -> str:
    """`[1, 2, 3, 7]` -> `"1-3, 7"` (the first ten runs)."""
    runs: list[str] = []
    i = 0
    while i < len(seqs):
        j = i
        while j + 1 < len(seqs) and seqs[j + 1] == seqs[j] + 1:
            j += 1
        runs.append(str(seqs[i]) if i == j else f"{seqs[i]}-{seqs[j]}")
        i = j + 1
    return ", ".join(runs[:10]) + (", ..." if len(runs) > 10 else "")
