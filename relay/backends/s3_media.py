"""Media in an S3-compatible bucket (AWS S3, R2, MinIO, RunPod's S3 API): persist, verify, then publish.

Items arrive as ~512 KiB parts, in any order, below S3's 5 MiB multipart minimum. `S3MediaSink` spools
an item to a local temp file (parts written at their offsets, as on disk), and at `finish`:
1. checks size and sha256 of the spooled bytes (a corrupt item never reaches the bucket);
2. uploads it with one PUT carrying a SHA-256 checksum of the bytes sent, which the store checks (S3 single
   PUTs go up to 5 GiB; the relay's items are capped below that);
3. reads the object's checksum back (`HEAD`, ChecksumMode ENABLED): the store's SHA-256 and size must be
   those of the verified bytes (an object that differs is deleted and the upload fails);
and only then returns the object, which the poller journals as the item's record. Nothing half-uploaded is
ever referenced by a record: a PUT is atomic, and a failure leaves the item to be retried or reported.

Why spool rather than buffer multipart parts in memory (docs/relay.md, "Cluster mode", has the figures):
memory stays bounded by configuration (not 5+ MiB per item in flight), parts may arrive out of order, and a
verified whole object costs one request and no multipart bookkeeping to clean up after a crash.

Reads are by range (`GET` with `Range`), for websocket chunk frames and HTTP Range requests.
"""

from __future__ import annotations

import base64
import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from podstream.sinks import PartFile
from relay.backends.protocols import StoredObject

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client
else:
    S3Client = Any

#: Largest object one PUT may carry (S3's limit).
MAX_PUT_BYTES: Final = 5 * 1024**3


class MediaUrlError(ValueError):
    pass


class MediaUploadFailed(Exception):
    """The bucket did not take the item, or took something other than what was verified."""


@dataclass(frozen=True)
class MediaUrl:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, url: str) -> MediaUrl:
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.netloc:
            raise MediaUrlError(f"PODSTREAM_MEDIA_URL must be s3://BUCKET[/PREFIX], got {url!r}")
        return cls(parts.netloc, parts.path.strip("/"))

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)


def sha256_b64(hexdigest: str) -> str:
    return base64.b64encode(bytes.fromhex(hexdigest)).decode("ascii")


class S3MediaStore:
    """The bucket side: keys of items, verified uploads, ranged reads, presigned URLs, deletion."""

    def __init__(self, client: S3Client, url: MediaUrl, *, spool_dir: Path | None = None) -> None:
        self.client = client
        self.url = url
        self.spool_dir = spool_dir

    def item_key(self, job: str, run: int, name: str) -> str:
        return self.url.key(job, str(run), name)

    def sink(self, job: str, run: int, name: str, size: int) -> S3MediaSink:
        return S3MediaSink(self, self.item_key(job, run, name), size)

    def upload(
        self, key: str, path: Path, size: int, sha256: str, *, content_type: str | None = None
    ) -> StoredObject:
        """PUT the verified file at `path` with a SHA-256 checksum of the bytes sent (the store checks it),
        then HEAD it: the store's own checksum and size must be those of the verified bytes."""
        if size > MAX_PUT_BYTES:
            raise MediaUploadFailed(f"an item of {size} bytes is over S3's single-PUT limit")
        try:
            with open(path, "rb") as body:
                self.client.put_object(
                    Bucket=self.url.bucket, Key=key, Body=body, ContentLength=size,
                    ChecksumAlgorithm="SHA256", Metadata={"sha256": sha256},
                    ContentType=content_type or "application/octet-stream",
                )  # fmt: skip
            head = self.client.head_object(Bucket=self.url.bucket, Key=key, ChecksumMode="ENABLED")
        except Exception as exc:  # botocore: ClientError, EndpointConnectionError, ...
            raise MediaUploadFailed(f"uploading {key} failed: {exc}") from exc
        checksum = head.get("ChecksumSHA256")
        # A store that keeps no checksum (some S3-compatibles) is checked by size only.
        if int(head["ContentLength"]) != size or (checksum is not None and checksum != sha256_b64(sha256)):
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.url.bucket, Key=key)
            raise MediaUploadFailed(
                f"the bucket holds other bytes than the verified {key} "
                f"(size {head['ContentLength']}, checksum {checksum}); deleted"
            )
        return StoredObject(key, size, sha256)

    def move(self, source: str, target: str, size: int, sha256: str) -> StoredObject:
        """Copy `source` to `target` inside the bucket (with the sha256 in its metadata), check the copy's
        size, then delete `source`: an uploaded file becomes an item's object."""
        bucket = self.url.bucket
        try:
            self.client.copy_object(
                Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": source},
                MetadataDirective="REPLACE", Metadata={"sha256": sha256},
            )  # fmt: skip
            head = self.client.head_object(Bucket=bucket, Key=target)
        except Exception as exc:  # botocore: ClientError, EndpointConnectionError, ...
            raise MediaUploadFailed(f"moving {source} to {target} failed: {exc}") from exc
        if int(head["ContentLength"]) != size:
            raise MediaUploadFailed(f"the copy {target} has {head['ContentLength']} bytes, not {size}")
        with contextlib.suppress(Exception):
            self.client.delete_object(Bucket=bucket, Key=source)
        return StoredObject(target, size, sha256)

    def stat(self, key: str) -> StoredObject | None:
        """The object's size and sha256 (our metadata), or None when there is no such object."""
        try:
            head = self.client.head_object(Bucket=self.url.bucket, Key=key)
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return StoredObject(key, int(head["ContentLength"]), head.get("Metadata", {}).get("sha256", ""))

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD answer (ContentLength, ContentType, LastModified, Metadata), or None."""
        try:
            head: dict[str, Any] = dict(self.client.head_object(Bucket=self.url.bucket, Key=key))
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return head

    def touch(self, key: str, head: dict[str, Any]) -> None:
        """Restart the object's LastModified: a copy onto itself, which S3 allows only when it replaces the
        metadata, so the metadata and type of its `head` are given again."""
        self.client.copy_object(
            Bucket=self.url.bucket, Key=key, CopySource={"Bucket": self.url.bucket, "Key": key},
            MetadataDirective="REPLACE", Metadata=dict(head.get("Metadata") or {}),
            ContentType=str(head.get("ContentType") or "application/octet-stream"),
        )  # fmt: skip

    def list(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """(key, size, last modified as unix time) of every object under `prefix`."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.url.bucket, Prefix=prefix):
            for entry in page.get("Contents", []):
                if "Key" in entry:
                    yield entry["Key"], int(entry.get("Size", 0)), entry["LastModified"].timestamp()

    def delete_keys(self, keys: Sequence[str]) -> None:
        """Delete these objects (1,000 per request, S3's limit)."""
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.url.bucket, Delete={"Objects": batch, "Quiet": True})  # type: ignore[typeddict-item]

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """`length` bytes of the object from `offset` (fewer at its end)."""
        if length <= 0:
            return b""
        answer = self.client.get_object(
            Bucket=self.url.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
        )
        data: bytes = answer["Body"].read()
        return data

    def presign(self, key: str, ttl_s: float) -> str:
        """A URL that lets its holder GET the object for `ttl_s` seconds (browsers fetch from the bucket)."""
        url: str = self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.url.bucket, "Key": key}, ExpiresIn=max(1, int(ttl_s))
        )
        return url

    def delete_job(self, job: str) -> int:
        """Delete every object of the job; returns how many."""
        deleted = 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.url.bucket, Prefix=self.url.key(job) + "/"):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", []) if "Key" in o]
            if keys:
                self.client.delete_objects(Bucket=self.url.bucket, Delete={"Objects": keys, "Quiet": True})  # type: ignore[typeddict-item]
                deleted += len(keys)
        return deleted


class S3MediaSink:
    """A `wire.ItemSink` for one item: spooled to a temp file, verified, uploaded, verified again.

    `finish` returns (True, StoredObject) once the object is in the bucket as verified; (False, None) when
    the item's bytes do not match its size or sha256 (nothing is uploaded); it raises `MediaUploadFailed`
    when the bucket is unreachable or refuses (the bytes are kept in the spool file for a retry: `retry`)."""

    def __init__(self, store: S3MediaStore, key: str, size: int) -> None:
        self.store = store
        self.key = key
        self.size = size
        fd, name = tempfile.mkstemp(prefix=".podstream-", suffix=".part", dir=store.spool_dir)
        self._file: PartFile | None = PartFile(fd)
        self.path = Path(name)
        self.sha256: str | None = None

    def write(self, offset: int, data: bytes) -> None:
        assert self._file is not None
        self._file.write(offset, data)

    def finish(self, sha256: str) -> tuple[bool, Any]:
        assert self._file is not None
        size, digest = self._file.digest()
        if size != self.size or digest != sha256:
            self.abort()
            return False, None
        self.sha256 = sha256
        return True, self.retry()

    def retry(self) -> StoredObject:
        """Upload the verified spool file (again); it is removed once the bucket holds it."""
        assert self.sha256 is not None
        stored = self.store.upload(self.key, self.path, self.size, self.sha256)
        self.abort()
        return stored

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            self.path.unlink()
