"""Direct upload delivery: `PUT /v1/uploads/{job}/{item}`, a worker's file sent to the relay out of band.

A worker whose job asks for `delivery: upload` (or `auto`, above a size) PUTs each file here instead of
streaming its parts through RunPod, then streams only a small `ref` envelope (worker/upload.py).

Request: the file as the body (`Content-Length` or chunked), `Authorization: Bearer <API key with the
`upload` scope>`, `X-Podstream-Sha256: <64 hex>`. The body is streamed to a temp file in the job's own
directory (`jobs/<job>/uploads/.<random>.part`) while it is hashed, never held whole in memory, and stops
being read as soon as it passes `max_upload_bytes`. Only a body whose sha256 matches the header is renamed to
`uploads/<item:05d>-<sha256>.bin`; the name is derived from the item index and the verified digest, nothing
of the request's path is used as a path. Every body byte written to disk (a refused upload's too) counts in
the relay's `podstream_relay_bytes_in_total{source="upload"}`; streamed items count under `source="runpod"`. Answer `201 {"job", "item", "size", "sha256", "url"}`: `url` (the
item's media URL on this relay) is what the worker puts in its `ref`.

When that `ref` reaches the poller through RunPod's stream, `claim` moves the file into the job's media
directory under the name a streamed item would get and the item is journaled exactly as a streamed one (a
relative media `url`, its bytes fanned out as `chunk` frames), plus `delivery: "upload"`. Journaling on the
`ref`, not on the PUT, keeps the poller the job's single writer, the journal in the worker's order, and a
lost `ref` recoverable like any other envelope (relay/ingest/recovery.py).

An upload that no `ref` ever claims (the worker crashed after its PUT, or its job failed) is deleted by
the relay's retention sweep (`sweep_unclaimed`): `upload_grace_s` after it arrived, or as soon as its job
has ended.

Errors (JSON `{"error": {"code", "message"}}`), each leaving nothing behind on disk:

    401 unauthorized      no or unknown API key          403 forbidden        a key without the `upload` scope
    400 bad_job_id        job id not allowed (`..`, `/`, NUL, ...)
    400 bad_item          item is not an integer index   400 bad_sha256       header missing or not 64 hex digits
    400 bad_length        Content-Length not a number    404 not_found        the relay does not know the job
    409 job_finished      the job's stream already ended 413 too_large        body over `max_upload_bytes`
    422 sha256_mismatch   the body does not match the header
    507 quota_exceeded    the data directory's disk quota cannot hold the file
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final, Protocol

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from podstream import wire
from podstream.sinks import fsync_dir
from relay.api.auth import require_scope
from relay.config import RelaySettings
from relay.metrics import RelayMetrics
from relay.storage.errors import BadJobId, QuotaExceeded, check_job_id
from relay.storage.job import HEX64, UPLOADS, JobStore

SHA256_HEADER: Final = "x-podstream-sha256"
_ITEM: Final = re.compile(r"^[0-9]{1,7}$")
#: Bytes gathered from the request before one write (in a worker thread).
_WRITE_BYTES: Final = 1 << 20
#: Buffers per `os.writev` (POSIX guarantees 16; Linux and macOS take 1024).
_IOV_MAX: Final = 1024


class UploadHost(Protocol):
    """What the upload route needs of the relay (`relay.service.Relay`, the app's `state.relay`). Named here,
    not imported: the service imports the poller, which imports this module for `claim`."""

    @property
    def settings(self) -> RelaySettings: ...

    @property
    def metrics(self) -> RelayMetrics: ...

    def job(self, job: str) -> JobStore | None: ...


class UploadError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def sweep_unclaimed(job_dir: Path, *, finished: bool, now: float, grace_s: float) -> list[Path]:
    """Delete the uploads of a job that no item claimed: each `grace_s` after it arrived (its `ref` may
    still be on its way through RunPod's stream), or at once when the job has ended (no `ref` can come).
    A temp file (an upload being received, or one a crash cut off) always gets its grace: a body may still
    be arriving. Returns what was deleted."""
    try:
        entries = list((job_dir / UPLOADS).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for path in entries:
        try:
            modified = path.lstat().st_mtime
        except FileNotFoundError:
            continue
        temp = path.name.endswith(".part")
        if modified + grace_s <= now or (finished and not temp):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


class TempFile:
    """The body being received: written in a worker thread, hashed as it goes, removed unless kept.

    `lazy`: the file is created by the first write (in that write's thread), not here. Its directory is
    made only when creating the file finds it missing (`parents`: with its parents), not on every upload."""

    def __init__(self, directory: Path, *, lazy: bool = False, parents: bool = False) -> None:
        self.directory = directory
        self.path = directory / f".{secrets.token_hex(12)}.part"
        self.fd = -1
        self.hash = hashlib.sha256()
        self.size = 0
        #: The file was made (a lazy one by its first write).
        self.opened = False
        self._parents = parents
        if not lazy:
            self._open()

    def _open(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        try:
            self.fd = os.open(self.path, flags, 0o644)
        except FileNotFoundError:  # the directory's first file (or it was removed): made now, once
            self.directory.mkdir(parents=self._parents, exist_ok=True)
            self.fd = os.open(self.path, flags, 0o644)
        self.opened = True

    def write(self, data: bytes) -> None:
        self.writev((data,))

    def writev(self, chunks: Sequence[bytes]) -> None:
        """Append `chunks` (hashed in order) with as few system calls as they allow: no copy of them made."""
        if self.fd < 0:
            self._open()
        views = []
        for chunk in chunks:
            if chunk:
                self.hash.update(chunk)
                views.append(memoryview(chunk))
        index = 0
        while index < len(views):
            written = os.writev(self.fd, views[index : index + _IOV_MAX])
            self.size += written
            while written:  # skip what went out; a short write resumes inside a chunk
                if written >= len(views[index]):
                    written -= len(views[index])
                    index += 1
                else:
                    views[index] = views[index][written:]
                    written = 0

    def keep(self, final: Path, *, fsync: bool) -> None:
        """Persist the file as `final` (fsynced, renamed, its directory fsynced). Callable again after the
        rename failed (e.g. `final`'s directory was missing and has been made since)."""
        if not self.opened:
            self._open()  # nothing was written (an empty file)
        if self.fd >= 0:
            if fsync:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
        os.replace(self.path, final)
        if fsync:
            fsync_dir(final.parent)

    def close(self) -> None:
        """Close the file, written in full, leaving it in place (to be read back, then discarded)."""
        if not self.opened:
            self._open()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def discard(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        if self.opened:
            self.path.unlink(missing_ok=True)


def _relay(request: Request) -> UploadHost:
    relay: UploadHost = request.app.state.relay
    return relay


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _target(request: Request) -> tuple[JobStore, int, str, int | None]:
    """Validate everything but the body: (store, item, sha256, declared length)."""
    try:
        job = check_job_id(request.path_params["job"])
    except BadJobId as exc:
        raise UploadError(400, "bad_job_id", str(exc)) from None
    raw_item = request.path_params["item"]
    if not _ITEM.match(raw_item) or int(raw_item) >= wire.MAX_ITEMS:
        raise UploadError(400, "bad_item", f"the item is an integer index below {wire.MAX_ITEMS}")
    sha256 = request.headers.get(SHA256_HEADER, "").strip().lower()
    if not HEX64.match(sha256):
        raise UploadError(400, "bad_sha256", "X-Podstream-Sha256 must be the body's sha256 as 64 hex digits")
    declared: int | None = None
    raw_length = request.headers.get("content-length")
    if raw_length is not None:
        if not raw_length.strip().isdigit():
            raise UploadError(400, "bad_length", "Content-Length must be a number")
        declared = int(raw_length)
    limit = _relay(request).settings.max_upload_bytes
    if declared is not None and declared > limit:
        raise UploadError(413, "too_large", f"uploads are limited to {limit} bytes")
    store = _relay(request).job(job)
    if store is None:
        raise UploadError(404, "not_found", f"this relay does not know job {job}")
    if store.finished:
        raise UploadError(409, "job_finished", f"job {job} has ended; its items can no longer change")
    return store, int(raw_item), sha256, declared


async def upload(request: Request) -> Response:
    await require_scope(request, "upload")  # Denied -> 401/403 (the app's handler)
    relay = _relay(request)
    try:
        store, item, sha256, declared = _target(request)
        counted = relay.metrics.bytes_in.labels("upload").inc
        await _receive(request, store, item, sha256, declared, relay.settings.max_upload_bytes, counted)
    except UploadError as exc:
        return _error(exc.status, exc.code, str(exc))
    except ClientDisconnect:
        return _error(400, "disconnected", "the upload ended before its body did")
    base = (relay.settings.public_url or str(request.base_url)).rstrip("/")
    size = store.upload_path(item, sha256).stat().st_size
    try:  # where the job's poller claims it (on local disk: in place already; in cluster mode: the bucket)
        await asyncio.to_thread(store.stash_upload, store.upload_path(item, sha256), item, sha256, size)
    except Exception as exc:  # the bucket did not take it (MediaUploadFailed): the worker retries
        return _error(503, "try_again", f"the upload could not be stored in the bucket: {exc}")
    body: dict[str, Any] = {"job": store.job, "item": item, "size": size, "sha256": sha256}
    body["url"] = f"{base}/v1/jobs/{store.job}/media/{item}"
    return JSONResponse(body, status_code=201)


async def _receive(
    request: Request,
    store: JobStore,
    item: int,
    sha256: str,
    declared: int | None,
    limit: int,
    counted: Callable[[int], None],
) -> None:
    reserved = 0
    if declared:  # the disk quota is reserved before the first byte is written, like a streamed item
        _reserve(store, declared)
        reserved = declared
    temp = await asyncio.to_thread(TempFile, store.dir / UPLOADS)
    kept = False
    try:
        buffer = bytearray()
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                raise UploadError(413, "too_large", f"uploads are limited to {limit} bytes")
            buffer += chunk
            if len(buffer) >= _WRITE_BYTES:
                await asyncio.to_thread(temp.write, bytes(buffer))
                counted(len(buffer))
                buffer.clear()
        if buffer:
            await asyncio.to_thread(temp.write, bytes(buffer))
            counted(len(buffer))
        if declared is not None and temp.size != declared:
            raise UploadError(400, "bad_length", f"the body was {temp.size} bytes, not {declared}")
        if temp.hash.hexdigest() != sha256:
            raise UploadError(422, "sha256_mismatch", "the body does not match X-Podstream-Sha256")
        if not declared and temp.size:
            _reserve(store, temp.size)
            reserved = temp.size
        await asyncio.to_thread(temp.keep, store.upload_path(item, sha256), fsync=store.fsync)
        kept = True
    finally:
        if not kept:
            await asyncio.to_thread(temp.discard)
            if reserved:
                store.quota.release(store.job, reserved)


def _reserve(store: JobStore, nbytes: int) -> None:
    try:
        store.quota.reserve(store.job, nbytes)
    except QuotaExceeded as exc:
        raise UploadError(507, "quota_exceeded", str(exc)) from None


def routes() -> list[Route]:
    return [Route("/v1/uploads/{job}/{item}", upload, methods=["PUT"])]
