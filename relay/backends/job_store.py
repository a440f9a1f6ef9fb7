"""A job's store in cluster mode: `relay.store.JobStore` with its journal, ingest log and media elsewhere.

The journal and ingest log are fenced Redis Streams (`RedisJournal`, `RedisIngestLog`), the metadata lives
in the job index, and items go to the bucket through `S3MediaSink` (spooled locally, verified, uploaded,
verified again) before the poller journals them. Everything else (the summaries, `record`/`commit`, the
Assembler's replay after a takeover) is `JobStore`'s, so `relay.poller.JobPoller` runs on it unchanged.

A finished item's result is the object key relative to the job, `<run>/<file>` (what the poller writes as
the record's `_file`, as on disk). While the poller replays the ingest log after a takeover, sinks ignore
the bytes and an item counts as stored when its object is in the bucket.

Not covered yet (docs/cluster.md, "What remains"): the disk quota (the bucket has none), local media reads
(`check_media`: chunk frames must come from `S3MediaStore.read_range`), uploads (`PUT /v1/uploads`).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from podstream.sinks import media_name
from relay.backends.job_index import RedisJobIndex
from relay.backends.redis_journal import RedisIngestLog, RedisJournal
from relay.backends.s3_media import S3MediaSink, S3MediaStore
from relay.store import JobStore


class BucketSink:
    """The poller's `wire.ItemSink` of one item in cluster mode (see the module docstring)."""

    def __init__(
        self, media: S3MediaStore, job: str, run: str, name: str, size: int, *, replaying: bool
    ) -> None:
        self.media = media
        self.job, self.run, self.name, self.size = job, int(run), name, size
        self.result = PurePosixPath(run, name)
        self.key = media.item_key(job, self.run, name)
        #: Set by the poller while it replays the ingest log; cleared when it is live again.
        self.replaying = replaying
        self._sink: S3MediaSink | None = None if replaying else media.sink(job, self.run, name, size)

    def write(self, offset: int, data: bytes) -> None:
        if self.replaying:
            return
        if self._sink is None:
            # The replay ended with this item half-received; its earlier parts were spooled by the replica
            # that died, so the item cannot be completed here: it fails its sha256 and is reported (and
            # resent by gap recovery), never published half.
            self._sink = self.media.sink(self.job, self.run, self.name, self.size)
        self._sink.write(offset, data)

    def finish(self, sha256: str) -> tuple[bool, Any]:
        if self._sink is None:  # stored before the takeover: the object is in the bucket, or it is not
            stored = self.media.stat(self.key)
            return (True, self.result) if stored is not None and stored.sha256 == sha256 else (False, None)
        ok, _stored = self._sink.finish(sha256)
        return (True, self.result) if ok else (False, None)

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()


class ClusterJobStore(JobStore):
    def __init__(
        self,
        spool: Path,
        job: str,
        *,
        journal: RedisJournal,
        wire: RedisIngestLog,
        index: RedisJobIndex,
        media: S3MediaStore,
        tail: int = 1024,
    ) -> None:
        # The base class makes the job's local directory: here it holds nothing but spooled items.
        super().__init__(spool, job, fsync=False, tail=tail)
        self.journal.close()
        self.wire.close()
        for name in ("journal.log", "wire.log"):
            (self.dir / name).unlink(missing_ok=True)
        # The same surface (relay.backends.protocols.JournalBackend / IngestLog), other storage.
        self.journal = journal  # type: ignore[assignment]
        self.wire = wire  # type: ignore[assignment]
        self.index = index
        self.bucket = media

    def open(self, *, meta: dict[str, Any] | None = None, stored: dict[str, Any] | None = None) -> JobStore:
        """A new job (`meta`, into the index) or one another replica created (its metadata from the index).
        Nothing to repair: a stream has no torn tails, and fenced appends cannot interleave."""
        if meta is not None:
            self.meta = dict(meta)
            self.index.create(self.job, self.meta)
        else:
            self.meta = dict(stored if stored is not None else self.index.meta(self.job) or {})
        for record in self.journal.load():
            self._apply(record)
        return self

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.meta = dict(meta)
        self.index.update(self.job, self.meta)

    def media_sink(  # type: ignore[override]  # a BucketSink, not a MediaSink: same ItemSink surface
        self, directory: Path, item: int, id: str, mime: str, size: int, *, replaying: bool
    ) -> BucketSink:
        return BucketSink(
            self.bucket, self.job, directory.name, media_name(item, id, mime), size, replaying=replaying
        )
