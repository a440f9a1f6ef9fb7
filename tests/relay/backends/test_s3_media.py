"""S3MediaStore and S3MediaSink against moto's S3 server on loopback: verified before referenced."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from bench._relay_stack import free_port
from relay.backends.s3_media import MediaUploadFailed, MediaUrl, MediaUrlError, S3MediaStore
from tests.relay.backends.conftest import S3Server


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
    from relay.backends.cluster import s3_client

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


def test_an_object_other_than_the_verified_bytes_is_refused_and_deleted(
    media: S3MediaStore, tmp_path: Path
) -> None:
    """The spooled file changed after it was verified (a disk error, another process): the store's own
    SHA-256 of what it received differs, so the upload fails and the object is deleted."""
    path = tmp_path / "file"
    path.write_bytes(b"changed after verification")
    claimed = hashlib.sha256(b"the verified bytes").hexdigest()
    with pytest.raises(MediaUploadFailed, match=r"other bytes than the verified relay/job/1/x"):
        media.upload("relay/job/1/x", path, path.stat().st_size, claimed)
    assert media.stat("relay/job/1/x") is None


def test_presigned_urls_and_deleting_a_job(media: S3MediaStore) -> None:
    import httpx

    for job, name in (("job-a", "00000-a.bin"), ("job-a", "00001-b.bin"), ("job-b", "00000-a.bin")):
        sink = media.sink(job, 1, name, 3)
        sink.write(0, b"abc")
        assert sink.finish(hashlib.sha256(b"abc").hexdigest())[0]
    url = media.presign("relay/job-a/1/00000-a.bin", 60)
    assert httpx.get(url).content == b"abc"
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
