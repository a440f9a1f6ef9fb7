"""Media into S3: spool each item to a temp file and PUT it whole, or buffer multipart parts in memory.

    python -m bench._s3_spool [--items 8 --mb 16] [--small 40]

Not in `python -m bench`'s default set (it needs moto's S3 server, a dev dependency). Each item arrives as
512 KiB parts (the worker's), in order. Figures are ratios measured side by side against moto's S3 server
on loopback (docs/relay.md, "Cluster mode"): moto is not S3, so the ratio, not the seconds, is the point.
- spool: parts pwritten to a temp file, hashed as they come, one PUT with a SHA-256 checksum, one HEAD
  (relay/storage/cluster/s3_media.py);
- multipart: parts gathered into 8 MiB buffers (S3's minimum is 5 MiB), each sent as an upload part with
  its checksum, then CompleteMultipartUpload; an item under 8 MiB is one part.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._relay_stack import free_port

PART = 512 * 1024
BUFFER = 8 * 1024 * 1024


def spool(client: Any, directory: Path, key: str, data: bytes) -> int:
    from relay.storage.cluster.s3_media import MediaUrl, S3MediaStore

    store = S3MediaStore(client, MediaUrl("bench", ""), spool_dir=directory)
    sink = store.sink("job", 1, key, len(data))
    for offset in range(0, len(data), PART):
        sink.write(offset, data[offset : offset + PART])
    ok, _stored = sink.finish(hashlib.sha256(data).hexdigest())
    assert ok
    return 0  # bytes held in memory per item in flight


def multipart(client: Any, key: str, data: bytes) -> int:
    import base64

    upload = client.create_multipart_upload(Bucket="bench", Key=key, ChecksumAlgorithm="SHA256")
    digest, buffer, peak = hashlib.sha256(), bytearray(), 0
    parts: list[dict[str, Any]] = []

    def flush() -> None:
        number = len(parts) + 1
        checksum = base64.b64encode(hashlib.sha256(buffer).digest()).decode()
        answer = client.upload_part(
            Bucket="bench", Key=key, UploadId=upload["UploadId"], PartNumber=number, Body=bytes(buffer),
            ChecksumSHA256=checksum,
        )  # fmt: skip
        parts.append({"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum})
        buffer.clear()

    for offset in range(0, len(data), PART):
        piece = data[offset : offset + PART]
        digest.update(piece)
        buffer += piece
        peak = max(peak, len(buffer))
        if len(buffer) >= BUFFER:
            flush()
    if buffer or not parts:
        flush()
    client.complete_multipart_upload(
        Bucket="bench", Key=key, UploadId=upload["UploadId"], MultipartUpload={"Parts": parts}
    )
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    return peak


def run(client: Any, directory: Path, items: int, size: int, label: str) -> dict[str, float]:
    data = os.urandom(size)
    out: dict[str, float] = {}
    for name in ("spool", "multipart"):
        start = time.perf_counter()
        peak = 0
        for i in range(items):
            key = f"{label}-{name}-{i}"
            peak = max(
                peak, spool(client, directory, key, data) if name == "spool" else multipart(client, key, data)
            )
        out[name] = time.perf_counter() - start
        out[f"{name}_peak_mib"] = peak / 2**20
    print(
        f"{label}: {items} x {size / 2**20:.1f} MiB  spool {out['spool']:.2f} s  multipart {out['multipart']:.2f} s  "
        f"multipart/spool {out['multipart'] / out['spool']:.2f}  memory per item in flight: spool 0 MiB, "
        f"multipart {out['multipart_peak_mib']:.1f} MiB"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=8)
    parser.add_argument("--mb", type=float, default=16)
    parser.add_argument("--small", type=int, default=40, help="also this many 1 MiB items (images)")
    args = parser.parse_args()
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "bench"),
        ("AWS_SECRET_ACCESS_KEY", "bench"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(name, value)
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        client = boto3.session.Session().client("s3", endpoint_url=f"http://127.0.0.1:{port}")
        client.create_bucket(Bucket="bench")
        with tempfile.TemporaryDirectory() as directory:
            run(client, Path(directory), args.items, int(args.mb * 2**20), "videos")
            if args.small:
                run(client, Path(directory), args.small, 2**20, "images")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
