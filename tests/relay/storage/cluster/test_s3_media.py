"""S3MediaStore and S3MediaSink against both test S3 servers on loopback (moto, which verifies checksums, and
s3rver, which verifies none): verified before referenced, on a bucket that checks and on one that does not."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.awsrequest import AWSResponse, HTTPHeaders

from bench._relay_stack import free_port
from relay.storage.cluster.s3_media import (
    BucketChecks,
    Integrity,
    MediaUploadFailed,
    MediaUrl,
    MediaUrlError,
    S3MediaStore,
    SpoolChanged,
)
from tests.relay.storage.conftest import S3_SERVERS, S3Server


@pytest.fixture(params=S3_SERVERS)
def s3_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def parts(data: bytes, size: int) -> list[tuple[int, bytes]]:
    return [(offset, data[offset : offset + size]) for offset in range(0, len(data), size)]


def test_an_item_in_parts_out_of_order_is_uploaded_verified_and_read_by_range(
    media: S3MediaStore, s3_server: S3Server
) -> None:
    data = os.urandom(3 * 512 * 1024 + 123)
    sha = hashlib.sha256(data).hexdigest()
    sink = media.sink("job-1", 1, "00000-a.mp4", len(data))
    for offset, chunk in reversed(parts(data, 512 * 1024)):
        sink.write(offset, chunk)
    ok, stored = sink.finish(sha)
    assert (
        ok and stored.key == "relay/job-1/1/00000-a.mp4" and stored.size == len(data) and stored.sha256 == sha
    )
    assert not sink.path.exists()  # the spool file is gone once the bucket holds the object
    body = s3_server.client().get_object(Bucket="media", Key=stored.key)["Body"].read()
    assert body == data
    assert media.read_range(stored.key, 0, 10) == data[:10]
    assert media.read_range(stored.key, 1000, 256 * 1024) == data[1000 : 1000 + 256 * 1024]
    assert media.read_range(stored.key, len(data) - 5, 100) == data[-5:]  # fewer at the end
    assert media.read_range(stored.key, 0, 0) == b""
    assert media.stat(stored.key) == stored and media.stat("relay/job-1/1/none") is None


def test_bytes_that_do_not_match_are_never_uploaded(media: S3MediaStore, s3_server: S3Server) -> None:
    data = b"x" * 1000
    sink = media.sink("job", 1, "00000-a.png", 1000)
    sink.write(0, data)
    assert sink.finish(hashlib.sha256(b"other").hexdigest()) == (False, None)
    short = media.sink("job", 1, "00001-b.png", 2000)
    short.write(0, data)
    assert short.finish(hashlib.sha256(data).hexdigest()) == (False, None)
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket="media")
    assert not sink.path.exists() and not short.path.exists()


def test_an_unreachable_bucket_keeps_the_spool_for_a_retry(s3_server: S3Server, tmp_path: Path) -> None:
    data = os.urandom(4096)
    sha = hashlib.sha256(data).hexdigest()
    from relay.storage.cluster.cluster import s3_client

    down = S3MediaStore(
        s3_client(f"http://127.0.0.1:{free_port()}"), MediaUrl("media", ""), spool_dir=tmp_path
    )
    sink = down.sink("job", 1, "00000-a.bin", len(data))
    sink.write(0, data)
    with pytest.raises(MediaUploadFailed, match=r"uploading job/1/00000-a\.bin failed"):
        sink.finish(sha)
    assert sink.path.exists()  # nothing published; the verified bytes wait for the bucket
    sink.store = S3MediaStore(s3_server.client(), MediaUrl("media", ""), spool_dir=tmp_path)  # it is back
    stored = sink.retry()
    assert stored.size == len(data) and not sink.path.exists()
    assert s3_server.client().get_object(Bucket="media", Key="job/1/00000-a.bin")["Body"].read() == data


def test_a_spool_file_changed_after_verification_is_never_uploaded(
    media: S3MediaStore, tmp_path: Path
) -> None:
    """The spooled file changed after it was verified (a disk error, another process): the upload hashes it
    again before sending anything, refuses it as `SpoolChanged` (retrying cannot help), and the bucket stays
    empty. A sink in that state reports its item as failing its check, for gap recovery to resend."""
    path = tmp_path / "file"
    path.write_bytes(b"changed after verification")
    claimed = hashlib.sha256(b"the verified bytes").hexdigest()
    with pytest.raises(SpoolChanged, match=r"relay/job/1/x is no longer the verified bytes; nothing"):
        media.upload("relay/job/1/x", path, path.stat().st_size, claimed)
    with pytest.raises(SpoolChanged, match=r"the file of relay/job/1/y cannot be read"):
        media.upload("relay/job/1/y", tmp_path / "gone", 10, claimed)
    assert media.stat("relay/job/1/x") is None and media.stat("relay/job/1/y") is None
    assert media.integrity is None, "nothing was checked: nothing was sent"


def corrupt_puts(client: Any) -> None:
    """Flip the first byte of every PutObject body on its way to the bucket, after the client computed
    its headers (a bit flipped in transit, or by a proxy)."""

    def flip(request: Any, **_: Any) -> None:
        body = request.body.read() if hasattr(request.body, "read") else bytes(request.body)
        request.body = bytes([body[0] ^ 0xFF]) + body[1:]

    client.meta.events.register("before-send.s3.PutObject", flip)


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


def check_digests_like_aws(client: Any) -> None:
    """PutObject answered as AWS S3 answers it (neither test server does): 400 BadDigest when the body's
    SHA-256 or MD5 is not what `x-amz-checksum-sha256` or `Content-MD5` says; else on to the server."""

    def check(request: Any, **_: Any) -> AWSResponse | None:
        body = request.body.read() if hasattr(request.body, "read") else bytes(request.body)
        request.body = body
        sent = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        sha = base64.b64encode(hashlib.sha256(body).digest()).decode()
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        if sent.get("x-amz-checksum-sha256", sha) == sha and sent.get("content-md5", md5) == md5:
            return None
        error = b"<Error><Code>BadDigest</Code><Message>the digest did not match</Message></Error>"
        headers = HTTPHeaders()
        headers["content-type"] = "application/xml"
        return AWSResponse(request.url, 400, headers, _Raw(error))

    client.meta.events.register("before-send.s3.PutObject", check)


def hide_checksums(client: Any) -> None:
    """HEAD answers as from a bucket that keeps no SHA-256 and whose ETag is no MD5 (as a multipart
    upload's or SSE-KMS's): the upload can only read the object back."""

    def strip(parsed: dict[str, Any], **_: Any) -> None:
        parsed.pop("ChecksumSHA256", None)
        parsed["ETag"] = '"0123456789abcdef0123456789abcdef-1"'

    client.meta.events.register("after-call.s3.HeadObject", strip)


def cluster_lines(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "podstream.relay.cluster"]


@pytest.mark.parametrize("aws", [False, True], ids=["as-is", "checking-like-aws"])
def test_what_a_bucket_checks_is_probed_and_each_upload_proven_accordingly(
    media: S3MediaStore, s3_server: S3Server, caplog: pytest.LogCaptureFixture, aws: bool
) -> None:
    """Neither test server checks the digests of a PUT (moto keeps and returns the checksum it is sent,
    right or wrong; s3rver keeps none): the probe says so, and each upload is proven by the ETag, the
    server's MD5 of what it stored. A bucket that checks (as AWS S3 does) has checked it. Said once."""
    caplog.set_level(logging.INFO, logger="podstream.relay.cluster")
    if aws:
        check_digests_like_aws(media.client)
    for name in ("00000-a.bin", "00001-b.bin"):
        sink = media.sink("job", 1, name, 3)
        sink.write(0, b"abc")
        assert sink.finish(hashlib.sha256(b"abc").hexdigest())[0]
    assert media.checks() == BucketChecks(sha256=aws, md5=aws)
    assert media.integrity is (Integrity.CHECKED if aws else Integrity.ETAG_MD5)
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket="media", Prefix="relay/_probe/")
    if aws:
        assert cluster_lines(caplog) == [
            (logging.INFO, "bucket media checks x-amz-checksum-sha256 and Content-MD5 of each PUT"),
            (logging.INFO, "bucket media each upload was checked by the bucket against the verified digests"),
        ]
    else:
        assert cluster_lines(caplog) == [
            (logging.INFO, "bucket media checks no digest of a PUT: uploads are proven by its ETag (its MD5) or "
                           "read back"),
            (logging.WARNING, "bucket media does not check the digests of a PUT: each upload is proven by its "
                              "ETag (the bucket's MD5 of what it stored)"),
        ]  # fmt: skip


@pytest.mark.parametrize("aws", [False, True], ids=["as-is", "checking-like-aws"])
def test_bytes_changed_on_the_way_are_never_kept(media: S3MediaStore, s3_server: S3Server, aws: bool) -> None:
    """Both test servers keep a body that differs from its digests; its ETag is then not the verified bytes'
    MD5, so the relay reads it back and deletes it. A bucket that checks refuses the PUT. Either way the
    upload fails (the spool file is kept for a retry) and nothing is left in the bucket."""
    corrupt_puts(media.client)
    if aws:
        check_digests_like_aws(media.client)
    data = os.urandom(200_000)
    sink = media.sink("job", 1, "00000-a.bin", len(data))
    sink.write(0, data)
    expected = (
        r"uploading relay/job/1/00000-a\.bin failed: .*BadDigest" if aws else
        r"the bucket holds other bytes than the verified relay/job/1/00000-a\.bin \(read back: .*\); deleted"
    )  # fmt: skip
    with pytest.raises(MediaUploadFailed, match=expected):
        sink.finish(hashlib.sha256(data).hexdigest())
    assert sink.path.exists(), "the verified bytes wait for a retry"
    assert "Contents" not in s3_server.client().list_objects_v2(Bucket="media")
    sink.abort()


def test_a_bucket_that_checks_nothing_and_has_no_md5_etag_is_read_back(
    media: S3MediaStore, s3_server: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    """No checksum in HEAD and an ETag that is not the MD5: the object is read back whole and hashed. The
    right bytes pass (said once, as a warning); other bytes are deleted."""
    hide_checksums(media.client)
    data = os.urandom(300_000)
    sink = media.sink("job", 1, "00000-a.bin", len(data))
    sink.write(0, data)
    ok, stored = sink.finish(hashlib.sha256(data).hexdigest())
    assert ok and media.integrity is Integrity.READ_BACK
    assert s3_server.client().get_object(Bucket="media", Key=stored.key)["Body"].read() == data
    assert (
        logging.WARNING,
        "bucket media does not check the digests of a PUT and its ETag is not an MD5: each upload is read back "
        "whole and hashed (one more GET per object)",
    ) in cluster_lines(caplog)
    corrupt_puts(media.client)
    path = media.spool_dir / "again"  # type: ignore[operator]
    path.write_bytes(data)
    with pytest.raises(
        MediaUploadFailed, match=r"other bytes than the verified .* \(read back: .*\); deleted"
    ):
        media.upload("relay/job/1/00001-b.bin", path, len(data), hashlib.sha256(data).hexdigest())
    assert media.stat("relay/job/1/00001-b.bin") is None


def test_presigned_urls_keep_the_content_type_and_deleting_a_job(media: S3MediaStore) -> None:
    for job, name, mime in (
        ("job-a", "00000-a.png", "image/png"), ("job-a", "00001-b.bin", None), ("job-b", "00000-a.bin", None),
    ):  # fmt: skip
        sink = media.sink(job, 1, name, 3, content_type=mime)
        sink.write(0, b"abc")
        assert sink.finish(hashlib.sha256(b"abc").hexdigest())[0]
    url = media.presign("relay/job-a/1/00000-a.png", 60)
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url
    fetched = httpx.get(url)
    assert fetched.content == b"abc" and fetched.headers["content-type"] == "image/png"
    untyped = httpx.get(media.presign("relay/job-a/1/00001-b.bin", 60))
    assert untyped.headers["content-type"] == "application/octet-stream"
    assert media.delete_job("job-a") == 2 and media.delete_job("job-a") == 0
    assert (
        media.stat("relay/job-a/1/00001-b.bin") is None
        and media.stat("relay/job-b/1/00000-a.bin") is not None
    )


def test_media_urls() -> None:
    assert MediaUrl.parse("s3://bucket/some/prefix/") == MediaUrl("bucket", "some/prefix")
    assert MediaUrl.parse("s3://bucket").key("job", "1", "x") == "job/1/x"
    for bad in ("http://bucket/x", "s3:///x", "bucket/x"):
        with pytest.raises(MediaUrlError, match="s3://BUCKET"):
            MediaUrl.parse(bad)


def test_moving_an_upload_gives_it_the_item_type(
    media: S3MediaStore, s3_server: S3Server, tmp_path: Path
) -> None:
    path = tmp_path / "upload"
    path.write_bytes(b"mp4 bytes")
    sha = hashlib.sha256(b"mp4 bytes").hexdigest()
    media.upload("relay/job/uploads/00000-x.bin", path, 9, sha)
    moved = media.move(
        "relay/job/uploads/00000-x.bin", "relay/job/1/00000-a.mp4", 9, sha, content_type="video/mp4"
    )
    assert (
        moved == media.stat("relay/job/1/00000-a.mp4") and media.stat("relay/job/uploads/00000-x.bin") is None
    )
    head = s3_server.client().head_object(Bucket="media", Key="relay/job/1/00000-a.mp4")
    assert head["ContentType"] == "video/mp4" and head["Metadata"] == {"sha256": sha}
