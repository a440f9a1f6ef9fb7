"""Media in an S3-compatible bucket (AWS S3, R2, MinIO, RunPod's S3 API): persist, verify, then publish.

Items arrive as ~512 KiB parts, in any order, below S3's 5 MiB multipart minimum. `S3MediaSink` spools
an item to a local temp file (parts written at their offsets, as on disk), and at `finish`:
1. checks size and sha256 of the spooled bytes (a corrupt item never reaches the bucket);
2. uploads it with one PUT (S3 single PUTs go up to 5 GiB; the relay's items are capped below that) that
   carries the item's Content-Type and two digests of the verified bytes (hashed again just before, so a
   spool file that changed meanwhile is never sent): `x-amz-checksum-sha256` and `Content-MD5`;
3. proves the bucket holds the verified bytes without taking its word for it (`Integrity`): a bucket seen
   to refuse a PUT whose digest is not its body's (`BucketChecks`, probed once) has checked them; else its
   ETag must be the verified bytes' MD5 (the ETag of a single unencrypted PUT is the MD5 the store computed
   of what it stored); else the whole object is read back (`GET`) and hashed as it streams. The size (and
   a SHA-256 checksum, where `HEAD` returns one) must match too. An object that differs is deleted and the
   upload fails. Which proof a bucket allows is logged once.
and only then returns the object, which the poller journals as the item's record. Nothing half-uploaded is
ever referenced by a record: a PUT is atomic, and a failure leaves the item to be retried or reported.

Why probe rather than trust a checksum in `HEAD`: a store may keep and return the checksum it was sent
without checking it (moto does), and another keeps none (s3rver); neither says so.

Why spool rather than buffer multipart parts in memory (docs/relay.md, "Cluster mode", has the figures):
memory stays bounded by configuration (not 5+ MiB per item in flight), parts may arrive out of order, and a
verified whole object costs one request and no multipart bookkeeping to clean up after a crash.

Reads are by range (`GET` with `Range`), for websocket chunk frames and HTTP Range requests.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from podstream.sinks import PartFile
from relay.storage.protocols import StoredObject

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client
    from types_boto3_s3.type_defs import ObjectIdentifierTypeDef
else:
    S3Client = Any

log = logging.getLogger("podstream.relay.cluster")

#: Largest object one PUT may carry (S3's limit).
MAX_PUT_BYTES: Final = 5 * 1024**3
#: What a file or an object is read and hashed in (before the PUT; the read-back).
_READ_BYTES: Final = 1 << 20
#: What an object gets when nobody says what it is (S3's own default is `binary/octet-stream`).
DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"


class MediaUrlError(ValueError):
    pass


class MediaUploadFailed(Exception):
    """The bucket did not take the item, or took something other than what was verified."""


class SpoolChanged(MediaUploadFailed):
    """The local file is no longer the verified bytes (a disk error, another process): nothing was sent, and
    sending it again cannot help."""


@dataclass(frozen=True)
class BucketChecks:
    """Which digests of a PUT the bucket checks against the body, as seen by sending wrong ones
    (`S3MediaStore.checks`): AWS S3 and MinIO check both; moto and s3rver neither."""

    sha256: bool
    md5: bool

    @property
    def any(self) -> bool:
        return self.sha256 or self.md5

    def __str__(self) -> str:
        names = [n for n, on in (("x-amz-checksum-sha256", self.sha256), ("Content-MD5", self.md5)) if on]
        if not names:
            return "checks no digest of a PUT: uploads are proven by its ETag (its MD5) or read back"
        return f"checks {' and '.join(names)} of each PUT"


class Integrity(StrEnum):
    """How an upload was proven to be in the bucket as verified (`S3MediaStore.upload`)."""

    #: The bucket refuses a body that differs from the digests sent (`BucketChecks`), and it took this one.
    CHECKED = "checked"
    #: The bucket checks nothing, but its ETag (its MD5 of what it stored) is the verified bytes' MD5.
    ETAG_MD5 = "etag-md5"
    #: Neither: the relay read the whole object back and hashed it (one more GET per object).
    READ_BACK = "read-back"


#: What a replica logs the first time a bucket's uploads are proven each way.
_INTEGRITY_LOG: Final = {
    Integrity.CHECKED: (logging.INFO, "each upload was checked by the bucket against the verified digests"),
    Integrity.ETAG_MD5: (
        logging.WARNING,
        "does not check the digests of a PUT: each upload is proven by its ETag (the bucket's MD5 of what it "
        "stored)",
    ),
    Integrity.READ_BACK: (
        logging.WARNING,
        "does not check the digests of a PUT and its ETag is not an MD5: each upload is read back whole and "
        "hashed (one more GET per object)",
    ),
}


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


def file_digests(path: Path) -> tuple[int, str, str]:
    """(size, sha256 hex, md5 hex) of the file, read once."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as f:
        while chunk := f.read(_READ_BYTES):
            sha.update(chunk)
            md5.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest(), md5.hexdigest()


class S3MediaStore:
    """The bucket side: keys of items, verified uploads, ranged reads, presigned URLs, deletion."""

    def __init__(self, client: S3Client, url: MediaUrl, *, spool_dir: Path | None = None) -> None:
        self.client = client
        self.url = url
        self.spool_dir = spool_dir
        #: What the bucket checks of a PUT (None until probed: `checks()`).
        self.bucket_checks: BucketChecks | None = None
        #: How the last upload was proven stored (None before the first).
        self.integrity: Integrity | None = None
        self._logged: set[Integrity] = set()
        self._probing = threading.Lock()

    def item_key(self, job: str, run: int, name: str) -> str:
        return self.url.key(job, str(run), name)

    def sink(
        self, job: str, run: int, name: str, size: int, *, content_type: str | None = None
    ) -> S3MediaSink:
        return S3MediaSink(self, self.item_key(job, run, name), size, content_type=content_type)

    def checks(self) -> BucketChecks:
        """What the bucket checks of a PUT, probed once: a small object is PUT with a wrong SHA-256 checksum,
        then with a wrong Content-MD5 (`<prefix>/_probe/<random>`, deleted after); a bucket that checks
        refuses it (400). Blocking. Raises what the client raises when the bucket cannot be used."""
        with self._probing:
            if self.bucket_checks is None:
                key = self.url.key("_probe", uuid.uuid4().hex)
                body = b"podstream: does this bucket check the digests of a PUT?"
                other = b"not the body"
                try:
                    refused_sha256 = self._refused(
                        key, body, ChecksumAlgorithm="SHA256",
                        ChecksumSHA256=base64.b64encode(hashlib.sha256(other).digest()).decode("ascii"),
                    )  # fmt: skip
                    refused_md5 = self._refused(
                        key, body,
                        ContentMD5=base64.b64encode(hashlib.md5(other, usedforsecurity=False).digest()).decode(),
                    )  # fmt: skip
                finally:
                    with contextlib.suppress(Exception):
                        self.client.delete_object(Bucket=self.url.bucket, Key=key)
                self.bucket_checks = BucketChecks(refused_sha256, refused_md5)
                log.info("bucket %s %s", self.url.bucket, self.bucket_checks)
            return self.bucket_checks

    def _refused(self, key: str, body: bytes, **digest: Any) -> bool:
        try:
            self.client.put_object(Bucket=self.url.bucket, Key=key, Body=body, **digest)
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 400:
                return True
            raise
        return False

    def upload(
        self, key: str, path: Path, size: int, sha256: str, *, content_type: str | None = None
    ) -> StoredObject:
        """PUT the verified file at `path` (`size` bytes, `sha256`) as `key` with its Content-Type, then prove
        the bucket holds exactly those bytes (the module docstring, step 3; `self.integrity` says how).

        Raises `SpoolChanged` when the file is no longer the verified bytes (nothing sent), and
        `MediaUploadFailed` when the bucket cannot be reached, refuses, or holds other bytes (deleted)."""
        if size > MAX_PUT_BYTES:
            raise MediaUploadFailed(f"an item of {size} bytes is over S3's single-PUT limit")
        try:
            local_size, local_sha256, md5 = file_digests(path)
        except OSError as exc:
            raise SpoolChanged(f"the file of {key} cannot be read ({exc}); nothing was uploaded") from exc
        if (local_size, local_sha256) != (size, sha256):
            raise SpoolChanged(f"the file of {key} is no longer the verified bytes; nothing was uploaded")
        bucket = self.url.bucket
        try:
            checks = self.checks()
            with open(path, "rb") as body:
                # Both digests are the verified bytes' (not computed from the file as it is sent).
                self.client.put_object(
                    Bucket=bucket, Key=key, Body=body, ContentLength=size, ChecksumAlgorithm="SHA256",
                    ChecksumSHA256=sha256_b64(sha256), ContentMD5=base64.b64encode(bytes.fromhex(md5)).decode(),
                    Metadata={"sha256": sha256}, ContentType=content_type or DEFAULT_CONTENT_TYPE,
                )  # fmt: skip
            head = self.client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
            integrity, differs = self._prove(key, head, size, sha256, md5, checks)
        except Exception as exc:  # botocore: ClientError, EndpointConnectionError, ...
            raise MediaUploadFailed(f"uploading {key} failed: {exc}") from exc
        if differs is not None:
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=bucket, Key=key)
            raise MediaUploadFailed(
                f"the bucket holds other bytes than the verified {key} ({differs}); deleted"
            )
        self.integrity = integrity
        if integrity not in self._logged:
            self._logged.add(integrity)
            level, how = _INTEGRITY_LOG[integrity]
            log.log(level, "bucket %s %s", bucket, how)
        return StoredObject(key, size, sha256)

    def _prove(
        self, key: str, head: Any, size: int, sha256: str, md5: str, checks: BucketChecks
    ) -> tuple[Integrity, str | None]:
        """How the object was proven, and what differs from the verified bytes (None: nothing)."""
        stored = int(head["ContentLength"])
        checksum = head.get("ChecksumSHA256")
        if stored != size:
            return Integrity.CHECKED, f"{stored} bytes, not {size}"
        if checksum and checksum != sha256_b64(sha256):
            return Integrity.CHECKED, f"SHA-256 {checksum}, not {sha256_b64(sha256)}"
        if checks.any:
            return Integrity.CHECKED, None
        if str(head.get("ETag", "")).strip('"').lower() == md5:
            return Integrity.ETAG_MD5, None
        # No ETag to go by (SSE-KMS, SSE-C and some stores make it no MD5; or it is another MD5): the bytes.
        from botocore.exceptions import FlexibleChecksumError

        answer = self.client.get_object(Bucket=self.url.bucket, Key=key)
        digest = hashlib.sha256()
        try:
            for chunk in answer["Body"].iter_chunks(_READ_BYTES):
                digest.update(chunk)
        except FlexibleChecksumError as exc:  # botocore checks a body against the checksum the store keeps
            return Integrity.READ_BACK, f"read back: {exc}"
        read = digest.hexdigest()
        return Integrity.READ_BACK, None if read == sha256 else f"read back: sha256 {read}, not {sha256}"

    def move(
        self, source: str, target: str, size: int, sha256: str, *, content_type: str | None = None
    ) -> StoredObject:
        """Copy `source` to `target` inside the bucket (with the sha256 in its metadata and its Content-Type),
        check the copy's size, then delete `source`: an uploaded file becomes an item's object."""
        bucket = self.url.bucket
        try:
            self.client.copy_object(
                Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": source},
                MetadataDirective="REPLACE", Metadata={"sha256": sha256},
                ContentType=content_type or DEFAULT_CONTENT_TYPE,
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
            ContentType=str(head.get("ContentType") or DEFAULT_CONTENT_TYPE),
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
            batch: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.url.bucket, Delete={"Objects": batch, "Quiet": True})

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        """`length` bytes of the object from `offset` (fewer at its end)."""
        if length <= 0:
            return b""
        answer = self.client.get_object(
            Bucket=self.url.bucket, Key=key, Range=f"bytes={offset}-{offset + length - 1}"
        )
        data: bytes = answer["Body"].read()
        return data

    def presign(self, key: str, ttl_s: float, method: str = "GET") -> str:
        """A URL that lets its holder GET (or, `method="HEAD"`, HEAD) the object for `ttl_s` seconds (browsers
        fetch from the bucket). SigV4 signs the method: S3 refuses a HEAD at a URL presigned for GET."""
        operation = "head_object" if method == "HEAD" else "get_object"
        url: str = self.client.generate_presigned_url(
            operation, Params={"Bucket": self.url.bucket, "Key": key}, ExpiresIn=max(1, int(ttl_s))
        )
        return url

    def delete_job(self, job: str) -> int:
        """Delete every object of the job; returns how many."""
        deleted = 0
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.url.bucket, Prefix=self.url.key(job) + "/"):
            keys: list[ObjectIdentifierTypeDef] = [
                {"Key": o["Key"]} for o in page.get("Contents", []) if "Key" in o
            ]
            if keys:
                self.client.delete_objects(Bucket=self.url.bucket, Delete={"Objects": keys, "Quiet": True})
                deleted += len(keys)
        return deleted


class S3MediaSink:
    """A `wire.ItemSink` for one item: spooled to a temp file, verified, uploaded, verified again.

    `finish` returns (True, StoredObject) once the object is in the bucket as verified; (False, None) when
    the item's bytes do not match its size or sha256, or no longer do when they are sent (nothing is
    uploaded); it raises `MediaUploadFailed` when the bucket is unreachable, refuses or holds other bytes
    (the bytes are kept in the spool file for a retry: `retry`)."""

    def __init__(self, store: S3MediaStore, key: str, size: int, *, content_type: str | None = None) -> None:
        self.store = store
        self.key = key
        self.size = size
        self.content_type = content_type
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
        try:
            return True, self.retry()
        except SpoolChanged:
            return False, None

    def retry(self) -> StoredObject:
        """Upload the verified spool file (again); it is removed once the bucket holds it, or once it is no
        longer the verified bytes (`SpoolChanged`)."""
        assert self.sha256 is not None
        try:
            stored = self.store.upload(
                self.key, self.path, self.size, self.sha256, content_type=self.content_type
            )
        except SpoolChanged:
            self.abort()
            raise
        self.abort()
        return stored

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(OSError):
            self.path.unlink()
