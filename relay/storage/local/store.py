"""Per-job storage on local disk: the journal, the ingest log and the media files.

Layout under the data directory:

    jobs/<job>/journal.log    the job's public event log: records with a dense `seq` from 1
    jobs/<job>/wire.log       the ingest log: every envelope the Assembler accepted, minus its bytes
    jobs/<job>/job.json       small metadata (created, source, finished), replaced atomically
    jobs/<job>/media/<run>/   verified files, `{item:05d}-{id}.{ext}`; `.<name>.part` while arriving

Both logs are `RecordLog`s: append-only frames of `length (4 bytes, big endian) | crc32 (4) | msgpack map`.
Opening a log truncates a torn or corrupt tail (a crash in the middle of a write), so every record read
back is one that was written whole. `Journal` adds the dense `seq`, a small in-memory tail of recent
records and an offset index for older ones; readers only ever see records up to `published`, which the
single writer (the job's poller) advances after the records are durable ("persist, then publish").

Record fields starting with `_` are the relay's own (e.g. `_file`, the media file of an `item` record) and
are stripped before a record leaves the relay (`public`).

Job ids and file names are validated or derived here, never used raw as paths.

Disk quota: `Store.quota` (a `DiskQuota`) counts the bytes of every job; `JobStore.media_sink` reserves an
item's size before its first byte is written, and an item that does not fit (after the relay evicted what it
could) is refused: its bytes are not written and it ends as an `error` record with code `quota_exceeded`
(the Assembler still sees all its parts arrive, so it is not reported as lost in transit).

Deleting a job (`Store.trash`) first renames its directory out of `jobs/` (atomic: the job is gone for every
new request at once), then removes the files. A `JobStore` with readers (`JobStore.reading`) keeps its open
files until the last reader is done, so a sweep never pulls a file out from under a subscriber.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import secrets
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from podstream.sinks import PartFile, media_name

# Re-exported: they lived here before relay/storage/local/records.py.
from relay.storage.local.records import MAX_RECORD_BYTES as MAX_RECORD_BYTES
from relay.storage.local.records import RecordLog as RecordLog

JOB_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

STATUS: Final = "status"
PROGRESS: Final = "progress"
ITEM: Final = "item"
ERROR: Final = "error"
DONE: Final = "done"
RESULT: Final = "result"  # a wrapped handler's value, files as {"$file": i} (relay/ingest/results.py)
KINDS: Final = frozenset({STATUS, PROGRESS, ITEM, ERROR, RESULT, DONE})


class StoreError(Exception):
    pass


class QuotaExceeded(StoreError):
    """Storing this would take the data directory over its disk quota."""


class JobBroken(StoreError):
    """The job's directory cannot be opened as a job (its `job.json` is missing or unreadable).

    The job is reported as broken (`GET /v1/jobs` lists it with `status: "broken"` and the reason; a
    websocket `sub` gets an `err` frame) and its files are left as they are for an operator; every other
    job goes on working."""

    def __init__(self, job: str, reason: str) -> None:
        super().__init__(f"job {job} is broken: {reason}")
        self.job = job
        self.reason = reason


class MediaGone(StoreError):
    """An item's file is gone for good: deleted, or damaged (it no longer matches its size or sha256)."""


class MediaRetry(StoreError):
    """Reading an item's file failed for a reason that passes (EMFILE, ENOSPC, EIO, ...): try again later."""


#: OSErrors that say "not now" rather than "never": too many open files, a full disk, an I/O hiccup.
TRANSIENT_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.ENOMEM,
     errno.EINTR, errno.EBUSY, errno.ETIMEDOUT}
)  # fmt: skip


def transient(exc: OSError) -> bool:
    return exc.errno in TRANSIENT_ERRNOS


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


class BadJobId(StoreError, ValueError):
    pass


def check_job_id(job: str) -> str:
    if not isinstance(job, str) or not JOB_ID.fullmatch(job) or ".." in job:
        raise BadJobId("a job id is 1-128 characters: letters, digits and _ . : - (not starting with one)")
    return job


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The record as clients see it: without the relay's own `_` fields."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


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


class MediaSink:
    """A `wire.ItemSink` writing one item at its parts' offsets into a temp file, renamed when verified.

    Like `podstream.sinks.FileSink`, plus resuming: a sink created while the poller replays its ingest log
    after a restart (`replaying`) ignores the writes (their bytes are already on disk) and, once live again,
    appends to the existing temp file and hashes it back from disk at `finish`.
    """

    def __init__(
        self,
        directory: Path,
        item: int,
        id: str,
        mime: str,
        size: int,
        *,
        fsync: bool,
        replaying: bool,
        refused: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
        on_abort: Callable[[], None] | None = None,
        on_stored: Callable[[], None] | None = None,
    ):
        self.final = directory / media_name(item, id, mime)
        self.temp = directory / f".{self.final.name}.part"
        self.size = size
        self.fsync = fsync
        self.replaying = replaying
        #: Why this item is not stored (the disk quota): nothing is written and it finishes as failed.
        self.refused = refused
        self.on_bytes = on_bytes
        #: Called once if the item is abandoned (its quota reservation goes back), or once it is stored.
        self.on_abort = on_abort
        self.on_stored = on_stored
        self._file: PartFile | None = None
        if not replaying and refused is None:
            self._file = PartFile(os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644))

    def _open(self) -> PartFile:
        if self._file is None:  # live again after a replay: the parts written before it are in the file
            self._file = PartFile(os.open(self.temp, os.O_RDWR | os.O_CREAT, 0o644))
        return self._file

    def write(self, offset: int, data: bytes) -> None:
        if self.replaying or self.refused is not None:
            return
        self._open().write(offset, data)
        if self.on_bytes is not None:
            self.on_bytes(len(data))

    def finish(self, sha256: str) -> tuple[bool, Any]:
        if self.replaying:  # it was finished before the restart: the outcome is on disk
            return (True, self.final) if self.final.exists() else (False, None)
        if self.refused is not None:
            # Every part arrived (nothing is lost in transit, so no gap and no resend): the store journals
            # the item as refused, not as stored (`JobStore.record`).
            return True, self.final
        file = self._open()
        size, digest = file.digest()
        if size != self.size or digest != sha256:
            self.abort()
            return False, None
        file.keep(self.temp, self.final, fsync=self.fsync)
        self._file = None
        if self.on_stored is not None:
            self.on_stored()
        return True, self.final

    def abort(self) -> None:
        if self.on_abort is not None:
            self.on_abort()
            self.on_abort = None
        if self._file is not None:
            self._file.close()
            self._file = None
        self.temp.unlink(missing_ok=True)


class JobStore:
    """One job's directory: journal, ingest log, metadata and media. Opened by `Store`."""

    def __init__(
        self, root: Path, job: str, *, fsync: bool, tail: int, quota: DiskQuota | None = None
    ) -> None:
        self.job = check_job_id(job)
        self.quota = quota or DiskQuota()
        #: Called with each journal record as it becomes visible (metrics).
        self.on_commit: Callable[[dict[str, Any]], None] | None = None
        #: Called with the bytes of media written (metrics).
        self.on_bytes: Callable[[int], None] | None = None
        self.readers = 0
        self.retired = False
        #: Items refused for the disk quota: item -> message (their end is reported as `quota_exceeded`).
        self.refused: dict[int, str] = {}
        self.dir = root / job
        self.fsync = fsync
        self.media = self.dir / "media"
        self.media.mkdir(parents=True, exist_ok=True)
        self._media_real = self.media.resolve()
        #: `_file` names already checked to stay inside `media` (resolve() is a syscall per path component,
        #: and media_path runs for every item sent to every subscriber).
        self._media_paths: dict[str, Path] = {}
        self.journal = Journal(self.dir / "journal.log", fsync=fsync, tail=tail)
        self.wire = RecordLog(self.dir / "wire.log", fsync=fsync)
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
        #: Media files known to match their record in this process (stored by it, or hashed once).
        self._verified: set[str] = set()
        #: What `relay.storage.local.repair` did when the job was opened (None: the journal was whole).
        self.repaired: str | None = None

    def open(self, *, meta: dict[str, Any] | None = None, stored: dict[str, Any] | None = None) -> JobStore:
        """A new job (`meta`, written to job.json) or an existing one (`stored`, read by `Store.read_meta`).

        An existing job whose journal was damaged is rebuilt here (`relay.storage.local.repair.rebuild`)."""
        if meta is not None:
            self.write_meta(meta)
        elif stored is not None:
            self.meta = dict(stored)
        for record in self.journal.load():
            self._apply(record)
        if meta is None:
            from relay.storage.local.repair import (
                rebuild,  # the repair reads the store; it is not needed otherwise
            )

            rebuild(self)
        return self

    def reset_summaries(self) -> None:
        """Forget the summaries (before the journal is read again from the start)."""
        self.status = ""
        self.items = {}
        self.failed_items = set()
        self.errors = 0
        self.done = None
        self.result = None

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.meta = dict(meta)
        temp = self.dir / ".job.json.tmp"
        temp.write_text(json.dumps(self.meta))
        os.replace(temp, self.dir / "job.json")

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

    def media_sink(
        self, directory: Path, item: int, id: str, mime: str, size: int, *, replaying: bool
    ) -> MediaSink:
        """The sink of one item's bytes, its size reserved against the disk quota first."""
        refused = None
        if not replaying:
            try:
                self.quota.reserve(self.job, size)
            except QuotaExceeded as exc:
                refused = self.refused[item] = f"item {item} ({size} bytes) was not stored: {exc}"
        sink = MediaSink(
            directory, item, id, mime, size, fsync=self.fsync, replaying=replaying, refused=refused,
            on_bytes=self.on_bytes,
            on_abort=None if refused is not None or replaying else lambda: self.quota.release(self.job, size),
            on_stored=None if refused is not None or replaying else lambda: self.quota.release(self.job, size, stored=True),
        )  # fmt: skip
        return sink

    def commit(self) -> int:
        """Make the appended records durable and visible (journal readers and the summaries).

        The ingest log is synced first: a record a subscriber saw must be rebuildable from it."""
        if self.journal.published != self.journal.head:
            self.wire.sync()
        head = self.journal.commit()
        for record in self._pending:
            self._apply(record)
            name = record.get("_file")
            if record["k"] == ITEM and isinstance(name, str):
                self._verified.add(name)  # verified as it was stored (MediaSink, or an upload's sha256)
            if self.on_commit is not None:
                self.on_commit(record)
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
            elif code not in ("duplicate", "lost_record"):  # a lost record's error is `journal_damaged`
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

    def media_dir(self, run: int) -> Path:
        path = self.media / str(run)
        path.mkdir(exist_ok=True)
        return path

    def media_path(self, record: dict[str, Any]) -> Path | None:
        """The file of an `item` record, or None when it has none (a ref) or it is gone."""
        name = record.get("_file")
        if not isinstance(name, str) or not name:
            return None
        path = self._media_paths.get(name)
        if path is None:
            path = self.media / name
            if path.resolve().parent.parent != self._media_real:
                return None
            self._media_paths[name] = path
        return path

    def check_media(self, record: dict[str, Any]) -> Path | None:
        """The verified file of an `item` record (None for a ref: its bytes live elsewhere). Blocking: run
        it in a thread. A file not stored by this process is hashed once before it is first served.

        Raises `MediaGone` when the file is missing or damaged (a damaged one is moved to `quarantine/`),
        `MediaRetry` when reading it failed for a passing reason (see `transient`)."""
        path = self.media_path(record)
        if path is None:
            return None
        item, name = record.get("item"), str(record["_file"])
        try:
            size = os.stat(path).st_size
            if name not in self._verified:
                if size != record.get("size") or sha256_file(path) != record.get("sha256"):
                    kept = self.quarantine_file(path, f"media-{name.replace('/', '-')}")
                    raise MediaGone(
                        f"the file of item {item} is damaged (it does not match its size and sha256); "
                        f"it was kept aside as {kept.relative_to(self.dir)}"
                    )
                self._verified.add(name)
        except FileNotFoundError:
            raise MediaGone(f"the file of item {item} is no longer available") from None
        except OSError as exc:
            if transient(exc):
                raise MediaRetry(f"reading the file of item {item} failed ({exc.strerror}); retry") from exc
            raise MediaGone(f"the file of item {item} cannot be read ({exc.strerror})") from exc
        return path

    def quarantine_file(self, path: Path, name: str) -> Path:
        """Move a damaged file out of the way, into the job's `quarantine/` (kept for an operator)."""
        directory = self.dir / "quarantine"
        directory.mkdir(exist_ok=True)
        target = directory / f"{name}.{time.time_ns()}"
        os.replace(path, target)
        return target

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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Store:
    """The data directory: creates, opens, lists and deletes jobs."""

    def __init__(
        self, data_dir: Path, *, fsync: bool = True, tail: int = 1024, quota: DiskQuota | None = None
    ) -> None:
        self.root = data_dir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.trash_dir = data_dir / "trash"
        self.fsync = fsync
        self.tail = tail
        self.quota = quota or DiskQuota()

    def exists(self, job: str) -> bool:
        """Whether the job has a directory here (a journal, or a job.json whose journal was lost)."""
        directory = self.root / check_job_id(job)
        return (directory / "journal.log").exists() or (directory / "job.json").exists()

    def create(self, job: str, **meta: Any) -> JobStore:
        store = JobStore(self.root, job, fsync=self.fsync, tail=self.tail, quota=self.quota)
        return store.open(meta={"job": job, "created_at": time.time(), **meta})

    def open(self, job: str) -> JobStore:
        """An existing job (KeyError when there is none; `JobBroken` when its job.json is unreadable)."""
        if not self.exists(job):
            raise KeyError(job)
        stored = self.read_meta(job)
        store = JobStore(self.root, job, fsync=self.fsync, tail=self.tail, quota=self.quota)
        try:
            return store.open(stored=stored)
        except BaseException:
            store.close()
            raise

    def read_meta(self, job: str) -> dict[str, Any]:
        """The job's job.json, or `JobBroken` saying why it cannot be read."""
        path = self.root / check_job_id(job) / "job.json"
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise JobBroken(job, "its job.json is missing") from None
        except IsADirectoryError:
            raise JobBroken(job, "its job.json is not a file") from None
        try:
            meta = json.loads(text)
        except ValueError as exc:
            raise JobBroken(job, f"its job.json is not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise JobBroken(job, "its job.json does not hold a JSON object")
        return meta

    def meta(self, job: str) -> dict[str, Any]:
        """The job's metadata (without opening its journal); {} when unreadable."""
        try:
            meta = json.loads((self.root / check_job_id(job) / "job.json").read_text())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def finished_at(self, job: str) -> float | None:
        """When the job finished (from its metadata, without opening its journal), or None."""
        value = self.meta(job).get("finished_at")
        return float(value) if isinstance(value, int | float) else None

    def measure(self) -> dict[str, int]:
        """Bytes on disk per job (files only, symlinks not followed)."""
        sizes: dict[str, int] = {}
        for job in self.job_ids():
            total = 0
            for dirpath, _dirs, names in os.walk(self.root / job):
                for name in names:
                    with contextlib.suppress(OSError):
                        total += os.lstat(os.path.join(dirpath, name)).st_size
            sizes[job] = total
        return sizes

    def job_ids(self) -> list[str]:
        ids = []
        for path in self.root.iterdir():
            if JOB_ID.fullmatch(path.name) and (
                (path / "journal.log").exists() or (path / "job.json").exists()
            ):
                ids.append(path.name)
        return sorted(ids)

    def trash(self, job: str) -> Path | None:
        """Move the job's directory out of `jobs/` (atomic); returns where it went, for `remove`."""
        directory = self.root / check_job_id(job)
        if not directory.exists():
            return None
        self.trash_dir.mkdir(exist_ok=True)
        target = self.trash_dir / f"{job}.{secrets.token_hex(4)}"
        os.rename(directory, target)
        return target

    def empty_trash(self) -> None:
        """Remove whatever an interrupted deletion left in the trash."""
        if self.trash_dir.is_dir():
            for path in self.trash_dir.iterdir():
                with contextlib.suppress(OSError):
                    self.remove(path)

    def delete(self, job: str) -> None:
        target = self.trash(job)
        if target is not None:
            self.remove(target)

    @staticmethod
    def remove(directory: Path) -> None:
        """Delete a directory tree without following symlinks."""
        if directory.is_symlink() or not directory.is_dir():
            directory.unlink(missing_ok=True)
            return
        for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
        directory.rmdir()
