"""A job's store in cluster mode: a `relay.storage.job.JobStore` whose journal, ingest log and media live elsewhere.

The journal and ingest log are fenced Redis Streams (`RedisJournal`, `RedisIngestLog`), the metadata lives
in the job index, and items go to the bucket through `S3MediaSink` (spooled locally, verified, uploaded,
verified again) before the poller journals them. Everything else (the summaries, `record`/`commit`, the
Assembler's replay after a takeover) is `JobStore`'s, so `relay.ingest.poller.JobPoller` runs on it unchanged.

A finished item's result is the object key relative to the job, `<run>/<file>` (what the poller writes as
the record's `_file`, as on disk). While the poller replays the ingest log after a takeover, sinks ignore
the bytes and an item counts as stored when its object is in the bucket.

A job is open on every replica that has readers of it; one replica polls it. The others hold it read-only
(`token` None) and take in what the poller committed when Redis wakes them (`fetch_new` in a thread, then
`take_in` on the event loop, so a subscriber's slice of the journal's tail never shifts under it). The
replica that wins the job's lease turns its store writable with `acquire(token)`; one that loses it goes
back to read-only with `release`.

Media reads go to the bucket: `check_media` answers a `BucketObject` (HEAD once per process: size and
sha256 against the record), which `relay.hub.ChunkCache` reads by range, shared between the replica's
subscribers, and `GET /v1/jobs/{id}/media/{item}` streams or redirects to (`--media-redirect`).
"""

from __future__ import annotations

import errno
import functools
import logging
import time
import weakref
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, Final

from botocore.exceptions import BotoCoreError, ClientError

from podstream.sinks import media_name
from podstream.wire import ItemRef
from relay.errors import StopPolling
from relay.storage.cluster.job_index import RedisJobIndex
from relay.storage.cluster.redis_journal import RedisIngestLog, RedisJournal
from relay.storage.cluster.s3_media import MediaUploadFailed, S3MediaSink, S3MediaStore, SpoolChanged
from relay.storage.errors import MediaGone, MediaRetry, check_job_id
from relay.storage.job import ITEM, JobHooks, JobStore
from relay.storage.protocols import StoredObject
from relay.storage.quota import DiskQuota

log = logging.getLogger("podstream.relay.cluster")

#: How long a verified item waits for an unreachable bucket before its poller gives up on it.
UPLOAD_PATIENCE_S: Final = 300.0


class BucketObject:
    """An item's object in the bucket, as a media source: what `relay.hub.ChunkCache` reads chunks of."""

    def __init__(self, media: S3MediaStore, key: str, size: int) -> None:
        self.media = media
        self.key = key
        self.size = size

    def __str__(self) -> str:  # the chunk cache's key
        return f"s3://{self.media.url.bucket}/{self.key}"

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (blocking: run in a thread). Raises OSError when the bucket cannot be
        reached (the subscriber reconnects and resumes), FileNotFoundError when the object is gone."""
        try:
            data = self.media.read_range(self.key, offset, length)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise FileNotFoundError(f"{self} is gone") from None
            raise OSError(errno.EIO, f"reading {self} failed: {exc}") from None
        except BotoCoreError as exc:
            raise OSError(errno.EIO, f"reading {self} failed: {exc}") from None
        if len(data) != length:
            raise FileNotFoundError(f"{self} is shorter than its record says")
        return data


class SpoolFailed(StopPolling, OSError):
    """An item's bytes could not be written to the local spool (a full disk, a read-only or missing
    directory). Not a crash of the poller: this replica stops polling the job and gives its lease up, so
    another replica takes it over (`relay.storage.cluster.replica`)."""


class BucketSink:
    """The poller's `wire.ItemSink` of one item in cluster mode (see the module docstring).

    `refused` (the spool's quota is full): nothing is spooled and the item ends as refused (`quota_exceeded`,
    journaled by `JobStore.record`). `on_end` is called once, when the item's spool file is gone (stored,
    failed, aborted): the quota reservation goes back. `on_spool_error` hears of a spool write that failed
    (then `SpoolFailed` is raised)."""

    def __init__(
        self, media: S3MediaStore, job: str, run: str, name: str, size: int, *, replaying: bool,
        mime: str | None = None, refused: str | None = None, on_end: Callable[[], None] | None = None,
        on_spool_error: Callable[[OSError], None] | None = None,
    ) -> None:  # fmt: skip
        self.media = media
        self.job, self.run, self.name, self.size = job, int(run), name, size
        #: The object's Content-Type (the item's mime), so a redirected download keeps its type.
        self.mime = mime or None
        self.result = PurePosixPath(run, name)
        self.key = media.item_key(job, self.run, name)
        #: Set by the poller while it replays the ingest log; cleared when it is live again.
        self.replaying = replaying
        self.refused = refused
        self.on_spool_error = on_spool_error
        # A sink dropped without finish or abort (its poller crashed) still gives its reservation back.
        self._end = weakref.finalize(self, on_end) if on_end is not None else None
        self._sink: S3MediaSink | None = None
        if not replaying and not refused:
            self._sink = self._new_sink()

    def _new_sink(self) -> S3MediaSink:
        try:
            return self.media.sink(self.job, self.run, self.name, self.size, content_type=self.mime)
        except OSError as exc:
            raise self._spool_failed(exc) from exc

    def _spool_failed(self, exc: OSError) -> SpoolFailed:
        self.abort()
        if self.on_spool_error is not None:
            self.on_spool_error(exc)
        return SpoolFailed(exc.errno, f"cannot spool item {self.key}: {exc.strerror or exc}")

    def write(self, offset: int, data: bytes) -> None:
        if self.replaying or self.refused:
            return
        if self._sink is None:
            # (Not reached after a takeover: the poller drops items the replay left half-received, see
            # `ClusterJobStore.partial_items_lost`; kept for a sink made live without a replay.)
            self._sink = self._new_sink()
        try:
            self._sink.write(offset, data)
        except OSError as exc:
            raise self._spool_failed(exc) from exc

    def finish(self, sha256: str) -> tuple[bool, Any]:
        if self.refused:  # every part arrived; `JobStore.record` journals it as refused
            return True, self.result
        if self._sink is None:  # stored before the takeover: the object is in the bucket, or it is not
            stored = self._stat_until_answered()
            return (True, self.result) if stored is not None and stored.sha256 == sha256 else (False, None)
        try:
            try:
                ok, _stored = self._sink.finish(sha256)
            except MediaUploadFailed as exc:
                # verified and spooled: only the bucket is missing (or the spool file broke meanwhile)
                ok = self._upload_until_stored(exc)
        finally:
            if self._end is not None:
                self._end()  # the spool file is gone, whatever the outcome
        return (True, self.result) if ok else (False, None)

    def _stat_until_answered(self) -> StoredObject | None:
        """HEAD the item's object, waiting out an unreachable bucket (as `_upload_until_stored` does): the
        replay after a takeover must not take "cannot ask" for "not there"."""
        deadline = time.monotonic() + UPLOAD_PATIENCE_S
        delay = 0.2
        while True:
            try:
                return self.media.stat(self.key)
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() >= deadline:
                    raise
                log.warning(
                    "item %s: the bucket cannot be asked (%s); retrying in %.1fs", self.key, exc, delay
                )
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _upload_until_stored(self, first: MediaUploadFailed) -> bool:
        """The bucket did not take a verified item: retry (in the poller's thread, so nothing after it is
        journaled or published meanwhile; RunPod keeps the rest of the stream) for up to `UPLOAD_PATIENCE_S`,
        then give up (the poller restarts and gap recovery resends the item). False when the spool file is no
        longer the verified bytes (the item fails its check, and gap recovery resends it)."""
        assert self._sink is not None
        deadline = time.monotonic() + UPLOAD_PATIENCE_S
        delay, error = 0.2, first
        while time.monotonic() < deadline:
            log.warning("item %s: %s; retrying in %.1fs", self.key, error, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
            try:
                self._sink.retry()
                log.info("item %s: stored in the bucket after a retry", self.key)
                return True
            except SpoolChanged as exc:
                log.warning("item %s: %s", self.key, exc)
                return False
            except MediaUploadFailed as exc:
                error = exc
        self._sink.abort()
        raise error

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()
        if self._end is not None:
            self._end()


class ClusterJobStore(JobStore):
    partial_items_lost = True  # a half-received item's parts were spooled by the replica that received them

    def __init__(
        self,
        spool: Path,
        job: str,
        *,
        journal: RedisJournal,
        wire: RedisIngestLog,
        index: RedisJobIndex,
        media: S3MediaStore,
        quota: DiskQuota | None = None,
        hooks: JobHooks | None = None,
        default_retention_s: float = 0.0,
        on_spool_error: Callable[[OSError], None] | None = None,
    ) -> None:
        # The job's local directory holds nothing but spooled items and received uploads.
        directory = spool / check_job_id(job)
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(directory, job, journal=journal, wire=wire, fsync=False, quota=quota, hooks=hooks)
        # The fenced streams themselves (lease hand-over and following), not only the backend surface.
        self.journal: RedisJournal = journal
        self.wire: RedisIngestLog = wire
        self.index = index
        self.bucket = media
        #: The relay's retention of finished jobs without their own (their deadline in the index).
        self.default_retention_s = default_retention_s
        #: Hears of a spool write that failed (the replica then gives its leases up and reports not ready).
        self.on_spool_error = on_spool_error

    def open(self, *, meta: dict[str, Any] | None = None, stored: dict[str, Any] | None = None) -> JobStore:
        """A new job (`meta`, into the index) or one another replica created (its metadata from the index).
        Nothing to repair: a stream has no torn tails, and fenced appends cannot interleave."""
        if meta is not None:
            self.meta = dict(meta)
            self.index.create(self.job, self.meta)
        else:
            self.meta = dict(stored if stored is not None else self.index.meta(self.job) or {})
        self._load()
        return self

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.meta = dict(meta)
        self.index.update(self.job, self.meta, default_retention_s=self.default_retention_s)

    def media_sink(
        self, directory: Path, item: int, id: str, mime: str, size: int, *, replaying: bool
    ) -> BucketSink:
        """The item's sink, its size reserved against the disk quota first: in cluster mode the quota
        bounds the local spool (items on their way to the bucket), so the reservation goes back as soon
        as the item has left the spool. An item that does not fit is refused (`quota_exceeded`)."""
        refused = None if replaying else self._reserve(item, size)
        on_end = None if replaying or refused else functools.partial(self.quota.release, self.job, size)
        return BucketSink(
            self.bucket, self.job, directory.name, media_name(item, id, mime), size, replaying=replaying,
            mime=mime, refused=refused, on_end=on_end, on_spool_error=self.on_spool_error,
        )  # fmt: skip

    # ------------------------------------------------------------------ media

    def media_dir(self, run: int) -> Path:
        """The run's name only (its items are spooled in the spool directory, then kept in the bucket):
        nothing is made on the local disk, so a spool that takes no files fails in the sink alone."""
        return self.media / str(run)

    def media_path(self, record: dict[str, Any]) -> Path | None:
        """Cluster mode holds no item files locally; `check_media` answers the item's `BucketObject`."""
        return None

    def object_key(self, record: dict[str, Any]) -> str | None:
        """The bucket key of an `item` record's object (None for a ref, or a `_file` that is not ours)."""
        name = record.get("_file")
        if not isinstance(name, str) or not name:
            return None
        parts = name.split("/")
        if len(parts) != 2 or not parts[0].isdigit() or parts[1] in ("", ".", "..") or "\\" in name:
            return None
        return self.bucket.item_key(self.job, int(parts[0]), parts[1])

    def check_media(self, record: dict[str, Any]) -> BucketObject | None:
        """The item's verified object (HEAD once per process: size and sha256 against the record).
        Blocking. `MediaGone` when it is missing or differs, `MediaRetry` when the bucket cannot be reached."""
        key = self.object_key(record)
        if key is None:
            return None
        item = record.get("item")
        if key not in self._verified and record["_file"] not in self._verified:  # (stored by this replica)
            try:
                stored = self.bucket.stat(key)
            except (ClientError, BotoCoreError) as exc:
                raise MediaRetry(f"the bucket cannot be reached for item {item} ({exc}); retry") from None
            if stored is None:
                raise MediaGone(f"the file of item {item} is no longer available")
            if stored.size != record.get("size") or stored.sha256 != record.get("sha256"):
                raise MediaGone(f"the object of item {item} does not match its size and sha256")
            self._verified.add(key)
        return BucketObject(self.bucket, key, int(record.get("size") or 0))

    # ------------------------------------------------------------------ uploads (PUT /v1/uploads)

    def upload_key(self, item: int, sha256: str) -> str:
        return self.bucket.url.key(self.job, "uploads", f"{item:05d}-{sha256}.bin")

    def stash_upload(self, path: Path, item: int, sha256: str, size: int) -> None:
        """A verified upload received by this replica (`relay.api.uploads`): into the bucket, where whichever
        replica polls the job claims it when the item's `ref` arrives. Blocking."""
        try:
            self.bucket.upload(self.upload_key(item, sha256), path, size, sha256)
        finally:
            path.unlink(missing_ok=True)
            self.quota.release(self.job, size)  # reserved by the upload route: it has left the spool

    def claim_upload(self, run: int, ref: ItemRef) -> PurePosixPath | None:
        """The `ref` of an uploaded item arrived (the poller, in its thread): its object becomes the item's
        object, named as a streamed item's. None when no matching upload is in the bucket (the ref points
        elsewhere). Idempotent: an upload claimed before a crash is found in place."""
        if len(ref.sha256) != 64:
            return None
        name = media_name(ref.item, ref.id, ref.mime)
        target = self.bucket.item_key(self.job, run, name)
        source = self.upload_key(ref.item, ref.sha256)
        uploaded = self.bucket.stat(source)
        if uploaded is None or uploaded.size != ref.size:
            stored = self.bucket.stat(target)
            if stored is not None and stored.size == ref.size and stored.sha256 == ref.sha256:
                return PurePosixPath(str(run), name)
            return None
        self.bucket.move(source, target, ref.size, ref.sha256, content_type=ref.mime or None)
        return PurePosixPath(str(run), name)

    # ------------------------------------------------------------------ read-only and writable

    @property
    def writable(self) -> bool:
        return self.journal.token is not None

    def fetch_new(self, limit: int = 1024) -> list[dict[str, Any]]:
        """Records other replicas committed past what this store has taken in (blocking: in a thread)."""
        journal = self.journal
        records: list[dict[str, Any]] = []
        after = journal.published
        while entries := journal.stream.read(after, limit):
            records.extend(record for _seq, record in entries)
            after = entries[-1][0]
        return records

    def take_in(self, records: list[dict[str, Any]]) -> int:
        """Make fetched records visible here (on the event loop); returns how many were new."""
        journal = self.journal
        new = 0
        for record in records:
            seq = int(record["seq"])
            if seq != journal.published + 1:
                continue  # taken in already (two fetches overlapped)
            journal._remember(record)
            journal.published = journal.head = seq
            self._apply(record)
            if record["k"] == ITEM and isinstance(record.get("_file"), str):
                key = self.object_key(record)
                if key is not None:
                    self._verified.add(key)  # verified by the replica that stored it
            new += 1
        journal._trim()
        if new and self.done is not None:
            meta = self.index.meta(self.job)
            if meta is not None:
                self.meta = meta
        return new

    def acquire(self, token: int) -> None:
        """This replica won the job's lease (token `token`): its poller may append from now on. Call after
        taking in everything committed so far (`fetch_new` / `take_in`)."""
        journal = self.journal
        wire = self.wire
        journal.token = wire.token = token
        wire._count = wire.stream.last()

    def release(self) -> None:
        """The lease is gone (lost, or the job ended): read-only again."""
        journal = self.journal
        wire = self.wire
        journal.token = wire.token = None
        journal.head = journal.published
        journal._pending.clear()
        wire._pending.clear()
