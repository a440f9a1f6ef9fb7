"""One job on local disk: the journal, the ingest log, the metadata and the media files.

Layout under the data directory (`relay.storage.local.jobs.Store`):

    jobs/<job>/journal.log    the job's public event log: records with a dense `seq` from 1
    jobs/<job>/wire.log       the ingest log: every envelope the Assembler accepted, minus its bytes
    jobs/<job>/job.json       small metadata (created, source, finished), replaced atomically
    jobs/<job>/media/<run>/   verified files, `{item:05d}-{id}.{ext}`; `.<name>.part` while arriving
    jobs/<job>/uploads/       files uploaded by a worker (`PUT /v1/uploads`), until their `ref` arrives

Both logs are `RecordLog`s: append-only frames of `magic | length | crc32 | msgpack map`. Opening a log
truncates a torn or corrupt tail (a crash in the middle of a write), so every record read back is one that
was written whole. Job ids and file names are validated or derived here, never used raw as paths.

Disk quota: `JobStore.media_sink` reserves an item's size before its first byte is written, and an item
that does not fit (after the relay evicted what it could) is refused: its bytes are not written and it ends
as an `error` record with code `quota_exceeded` (the Assembler still sees all its parts arrive, so it is not
reported as lost in transit).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from podstream.sinks import fsync_dir, media_name
from podstream.wire import ItemRef
from relay.storage.errors import MediaGone, MediaRetry, check_job_id, transient
from relay.storage.job import HEX64, JobHooks, JobStore
from relay.storage.local.journal import Journal
from relay.storage.local.media import MediaSink, sha256_file
from relay.storage.local.records import RecordLog
from relay.storage.quota import DiskQuota


class DiskJobStore(JobStore):
    """One job's directory: journal, ingest log, metadata and media. Opened by `Store`."""

    def __init__(
        self,
        root: Path,
        job: str,
        *,
        fsync: bool,
        tail: int,
        quota: DiskQuota | None = None,
        hooks: JobHooks | None = None,
    ) -> None:
        directory = root / check_job_id(job)
        media = directory / "media"
        media.mkdir(parents=True, exist_ok=True)
        journal = Journal(directory / "journal.log", fsync=fsync, tail=tail)
        wire = RecordLog(directory / "wire.log", fsync=fsync)
        super().__init__(directory, job, journal=journal, wire=wire, fsync=fsync, quota=quota, hooks=hooks)
        # The files themselves (the repair reads and rewrites them), not only the backend surface.
        self.journal: Journal = journal
        self.wire: RecordLog = wire
        self._media_real = media.resolve()
        #: `_file` names already checked to stay inside `media` (resolve() is a syscall per path component,
        #: and media_path runs for every item sent to every subscriber).
        self._media_paths: dict[str, Path] = {}
        #: What `relay.storage.local.repair` did when the job was opened (None: the journal was whole).
        self.repaired: str | None = None
        #: Media directories with a rename not yet fsynced (`sync_media`, at the next commit).
        self._unsynced_dirs: set[Path] = set()

    def open(self, *, meta: dict[str, Any] | None = None, stored: dict[str, Any] | None = None) -> JobStore:
        """A new job (`meta`, written to job.json) or an existing one (`stored`, read by `Store.read_meta`).
        A damaged journal is rebuilt by the caller (`Store.open`: `relay.storage.local.repair.rebuild`)."""
        if meta is not None:
            self.write_meta(meta)
        elif stored is not None:
            self.meta = dict(stored)
        self._load()
        return self

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.meta = dict(meta)
        temp = self.dir / ".job.json.tmp"
        temp.write_text(json.dumps(self.meta))
        os.replace(temp, self.dir / "job.json")

    def media_sink(
        self, directory: Path, item: int, id: str, mime: str, size: int, *, replaying: bool
    ) -> MediaSink:
        """The sink of one item's bytes, its size reserved against the disk quota first."""
        refused = None if replaying else self._reserve(item, size)
        sink = MediaSink(
            directory, item, id, mime, size, fsync=self.fsync, replaying=replaying, refused=refused,
            on_bytes=self.hooks.on_bytes,
            on_abort=None if refused is not None or replaying else lambda: self.quota.release(self.job, size),
            on_stored=None if refused is not None or replaying else lambda: self.quota.release(self.job, size, stored=True),
            on_renamed=self._renamed,
        )  # fmt: skip
        return sink

    def _renamed(self, directory: Path) -> None:
        """A verified file was renamed into `directory`: fsynced with the next commit, before any record."""
        if self.fsync:
            self._unsynced_dirs.add(directory)

    def sync_media(self) -> None:
        """The group commit's first step: each directory a file was renamed into since the last commit is
        fsynced once (the files themselves were fsynced before their rename)."""
        while self._unsynced_dirs:
            fsync_dir(self._unsynced_dirs.pop())

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

    def claim_upload(self, run: int, ref: ItemRef) -> Path | None:
        """Move the uploaded file into the run's media directory under the name a streamed item would get."""
        if not HEX64.match(ref.sha256):
            return None
        source = self.upload_path(ref.item, ref.sha256)
        if not (self.media / str(run)).is_dir() and not source.exists():
            return None
        directory = self.media_dir(run)
        target = directory / media_name(ref.item, ref.id, ref.mime)
        try:
            stat = source.stat()
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if target.stat().st_size == ref.size:
                    return target  # claimed before a crash
            return None
        if stat.st_size != ref.size:
            return None
        os.replace(source, target)
        if self.fsync:
            fsync_dir(directory)
        return target
