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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import struct
import time
import zlib
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgpack

from podstream.sinks import fsync_dir, media_name

_HEADER: Final = struct.Struct(">II")
#: No single record is larger than this (a manifest page is under 1 MB); a longer frame means corruption.
MAX_RECORD_BYTES: Final = 8 * 1024 * 1024
JOB_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")

STATUS: Final = "status"
PROGRESS: Final = "progress"
ITEM: Final = "item"
ERROR: Final = "error"
DONE: Final = "done"
KINDS: Final = frozenset({STATUS, PROGRESS, ITEM, ERROR, DONE})


class StoreError(Exception):
    pass


class BadJobId(StoreError, ValueError):
    pass


def check_job_id(job: str) -> str:
    if not isinstance(job, str) or not JOB_ID.match(job) or ".." in job:
        raise BadJobId("a job id is 1-128 characters: letters, digits and _ . : - (not starting with one)")
    return job


def public(record: dict[str, Any]) -> dict[str, Any]:
    """The record as clients see it: without the relay's own `_` fields."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def _pack(record: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(record, use_bin_type=True)
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


class RecordLog:
    """An append-only file of msgpack maps. One writer; `scan` and `read_at` may run beside it."""

    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = 0
        self.truncated = 0  # bytes of torn tail dropped on open

    def scan(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """Every whole record with its offset; truncates the file after the last good one. Call once, first."""
        offset = 0
        with open(self.path, "rb", buffering=1 << 20) as f:
            while True:
                header = f.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    break
                length, crc = _HEADER.unpack(header)
                if length > MAX_RECORD_BYTES:
                    break
                body = f.read(length)
                if len(body) < length or zlib.crc32(body) != crc:
                    break
                try:
                    record = msgpack.unpackb(body, raw=False)
                except (ValueError, msgpack.UnpackException):
                    break
                if not isinstance(record, dict):
                    break
                yield offset, record
                offset += _HEADER.size + length
        end = os.fstat(self._fd).st_size
        if end > offset:
            self.truncated = end - offset
            os.ftruncate(self._fd, offset)
            self.sync()
        self.size = offset

    def append(self, records: list[dict[str, Any]]) -> list[int]:
        """Write the records in one `write`; returns their offsets. Not durable until `sync`."""
        frames = [_pack(r) for r in records]
        offsets: list[int] = []
        for frame in frames:
            offsets.append(self.size)
            self.size += len(frame)
        data = b"".join(frames)
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        return offsets

    def sync(self) -> None:
        if self.fsync:
            os.fsync(self._fd)

    def read_at(self, offset: int, count: int) -> list[dict[str, Any]]:
        """Up to `count` records starting at `offset` (which must be a record boundary)."""
        out: list[dict[str, Any]] = []
        end = self.size
        while len(out) < count and offset < end:
            header = os.pread(self._fd, _HEADER.size, offset)
            length, _crc = _HEADER.unpack(header)
            body = os.pread(self._fd, length, offset + _HEADER.size)
            out.append(msgpack.unpackb(body, raw=False))
            offset += _HEADER.size + length
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)


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

    def load(self) -> Iterator[dict[str, Any]]:
        """Read the journal back (truncating a torn tail); yields every record. Call once, first."""
        for offset, record in self.log.scan():
            if record.get("seq") != self.head + 1:
                # A record out of sequence cannot have been written by us: treat it as the torn end.
                os.ftruncate(self.log._fd, offset)
                self.log.size = offset
                break
            self._offsets.append(offset)
            self.head += 1
            self._remember(record)
            yield record
        self.published = self.head
        self._trim()

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
        self, directory: Path, item: int, id: str, mime: str, size: int, *, fsync: bool, replaying: bool
    ):
        self.final = directory / media_name(item, id, mime)
        self.temp = directory / f".{self.final.name}.part"
        self.size = size
        self.fsync = fsync
        self.replaying = replaying
        self._fd: int | None = None
        self._hash = hashlib.sha256()
        self._hashed = 0
        if not replaying:
            self._fd = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.temp, os.O_RDWR | os.O_CREAT, 0o644)
        return self._fd

    def write(self, offset: int, data: bytes) -> None:
        if self.replaying:
            return
        os.pwrite(self._open(), data, offset)
        if offset == self._hashed:
            self._hash.update(data)
            self._hashed += len(data)

    def finish(self, sha256: str) -> tuple[bool, Any]:
        if self.replaying:  # it was finished before the restart: the outcome is on disk
            return (True, self.final) if self.final.exists() else (False, None)
        fd = self._open()
        end = os.fstat(fd).st_size
        if end != self.size:
            self.abort()
            return False, None
        while self._hashed < end:
            chunk = os.pread(fd, 1 << 20, self._hashed)
            self._hash.update(chunk)
            self._hashed += len(chunk)
        if self._hash.hexdigest() != sha256:
            self.abort()
            return False, None
        if self.fsync:
            os.fsync(fd)
        os.close(fd)
        self._fd = None
        os.replace(self.temp, self.final)
        if self.fsync:
            fsync_dir(self.final.parent)
        return True, self.final

    def abort(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self.temp.unlink(missing_ok=True)


class JobStore:
    """One job's directory: journal, ingest log, metadata and media. Opened by `Store`."""

    def __init__(self, root: Path, job: str, *, fsync: bool, tail: int) -> None:
        self.job = check_job_id(job)
        self.dir = root / job
        self.fsync = fsync
        self.media = self.dir / "media"
        self.media.mkdir(parents=True, exist_ok=True)
        self.journal = Journal(self.dir / "journal.log", fsync=fsync, tail=tail)
        self.wire = RecordLog(self.dir / "wire.log", fsync=fsync)
        self.meta: dict[str, Any] = {}
        # Summaries kept current as records are appended (used by the HTTP API and the poller).
        self.status = ""
        self.items: dict[int, dict[str, Any]] = {}  # latest `item` record per item index
        self.errors = 0
        self.done: dict[str, Any] | None = None
        self.closed = False
        self._pending: list[dict[str, Any]] = []

    def open(self, *, meta: dict[str, Any] | None = None) -> JobStore:
        meta_path = self.dir / "job.json"
        if meta is not None:
            self.write_meta(meta)
        elif meta_path.exists():
            self.meta = json.loads(meta_path.read_text())
        for record in self.journal.load():
            self._apply(record)
        return self

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.meta = dict(meta)
        temp = self.dir / ".job.json.tmp"
        temp.write_text(json.dumps(self.meta))
        os.replace(temp, self.dir / "job.json")

    def record(self, entries: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        """Append records to the journal (unpublished until `commit`) and update the summaries."""
        records = self.journal.extend(entries)
        self._pending.extend(records)
        return records

    def commit(self) -> int:
        """Make the appended records durable and visible (journal readers and the summaries)."""
        head = self.journal.commit()
        for record in self._pending:
            self._apply(record)
        self._pending.clear()
        if self.done is not None and not self.meta.get("finished_at"):
            self.write_meta({**self.meta, "finished_at": time.time()})
        return head

    def _apply(self, record: dict[str, Any]) -> None:
        kind = record["k"]
        if kind == STATUS:
            self.status = record["status"]
        elif kind == ITEM:
            self.items[record["item"]] = record
        elif kind == ERROR:
            if record.get("code") == "restarted":
                self.items.clear()
                self.errors = 0
            elif record.get("code") != "duplicate":
                self.errors += 1
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
        path = self.media / name
        if path.resolve().parent.parent != self.media.resolve():
            return None
        return path

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.journal.close()
            self.wire.close()


class Store:
    """The data directory: creates, opens, lists and deletes jobs."""

    def __init__(self, data_dir: Path, *, fsync: bool = True, tail: int = 1024) -> None:
        self.root = data_dir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.tail = tail

    def exists(self, job: str) -> bool:
        return (self.root / check_job_id(job) / "journal.log").exists()

    def create(self, job: str, **meta: Any) -> JobStore:
        store = JobStore(self.root, job, fsync=self.fsync, tail=self.tail)
        return store.open(meta={"job": job, "created_at": time.time(), **meta})

    def open(self, job: str) -> JobStore:
        if not self.exists(job):
            raise KeyError(job)
        return JobStore(self.root, job, fsync=self.fsync, tail=self.tail).open()

    def finished_at(self, job: str) -> float | None:
        """When the job finished (from its metadata, without opening its journal), or None."""
        try:
            meta = json.loads((self.root / check_job_id(job) / "job.json").read_text())
        except (OSError, ValueError):
            return None
        value = meta.get("finished_at") if isinstance(meta, dict) else None
        return float(value) if isinstance(value, int | float) else None

    def job_ids(self) -> list[str]:
        ids = []
        for path in self.root.iterdir():
            if JOB_ID.match(path.name) and (path / "journal.log").exists():
                ids.append(path.name)
        return sorted(ids)

    def delete(self, job: str) -> None:
        directory = self.root / check_job_id(job)
        if not directory.exists():
            return
        for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
        directory.rmdir()
