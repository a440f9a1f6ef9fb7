"""Real servers for the backend tests: a `redis-server` process and an S3 server, on free loopback ports,
started and stopped by each fixture. Nothing in-process is mocked: the clients speak the protocols.

Two independent S3 implementations, so the code stops fitting one fake (../docs/cluster.md, "Tested on"):
moto's server (Python, in this process's threads; verifies checksums) and s3rver (npm, a node process; keeps
what it is sent and verifies no checksum). `s3_server` is moto unless a test overrides `s3_kind`
(`params=S3_SERVERS`, or `@pytest.mark.parametrize("s3_kind", S3_SERVERS)`).
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import redis
from moto.server import ThreadedMotoServer

from bench._relay_stack import free_port
from relay.storage.cluster.cluster import s3_client
from relay.storage.cluster.s3_media import MediaUrl, S3MediaStore

#: Credentials of the test S3 servers: s3rver's one account (it checks signatures), which moto takes too.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "S3RVER",
    "AWS_SECRET_ACCESS_KEY": "S3RVER",
    "AWS_DEFAULT_REGION": "us-east-1",
}

#: The S3 servers a test can run on (`s3_kind`).
S3_SERVERS = ["moto", "s3rver"]

#: s3rver's install (`make test` builds it from tests/s3rver/package.json).
S3RVER = Path(__file__).resolve().parents[2] / "s3rver" / "node_modules" / ".bin" / "s3rver"


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        # redis-py's default socket timeout (5 s) would cut a test's XREAD BLOCK of up to 30 s short on a
        # loaded machine: the relay's own clients set theirs (relay/storage/cluster/cluster.py)
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=60)


def start_redis(directory: Path, *extra: str) -> RedisServer:
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "no", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(host="127.0.0.1", port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if process.poll() is not None:
                raise RuntimeError("redis-server exited at start") from None
            time.sleep(0.05)
    client.close()
    return RedisServer(process, port)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path)
    try:
        yield server
    finally:
        stop(server.process)


@pytest.fixture
def rclient(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    return AWS_ENV


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str
    kind: str = "moto"

    def client(self) -> Any:
        """A plain boto3 client with the test credentials (the relay's own is `cluster.s3_client`)."""
        session = boto3.session.Session(
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        )  # fmt: skip
        return session.client("s3", endpoint_url=self.endpoint_url)


@contextlib.contextmanager
def running_s3(kind: str, directory: Path, bucket: str = "media") -> Iterator[S3Server]:
    """An S3 server of `kind` ("moto" or "s3rver") on a free loopback port with an empty `bucket`; s3rver keeps
    its objects under `directory`. Stopped on exit. (The caller provides the credentials: `AWS_ENV`.)"""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    if kind == "moto":
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        moto.start()
        try:
            # moto keeps its buckets per process, not per server: start each test from an empty S3
            httpx.post(f"{endpoint}/moto-api/reset").raise_for_status()
            httpx.put(f"{endpoint}/{bucket}").raise_for_status()  # CreateBucket
            yield S3Server(endpoint, bucket, kind)
        finally:
            moto.stop()
        return
    if kind != "s3rver":
        raise ValueError(f"no S3 server {kind!r}")
    if not S3RVER.exists():
        pytest.fail(f"s3rver is not installed ({S3RVER}): `make test` installs it, or run `make s3rver`")
    process = subprocess.Popen(
        [str(S3RVER), "--directory", str(directory), "--address", "127.0.0.1", "--port", str(port),
         "--silent", "--configure-bucket", bucket],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.TransportError):
                httpx.get(endpoint, timeout=1)
                break
            if process.poll() is not None:
                assert process.stderr is not None
                raise RuntimeError(f"s3rver exited at start: {process.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
        else:
            raise RuntimeError("s3rver did not answer within 15 s")
        yield S3Server(endpoint, bucket, kind)
    finally:
        stop(process)
        if process.stderr is not None:
            process.stderr.close()


@pytest.fixture
def s3_kind() -> str:
    """Which S3 server `s3_server` runs: moto unless a test or module overrides it (`S3_SERVERS`)."""
    return "moto"


@pytest.fixture
def s3_server(aws_env: dict[str, str], s3_kind: str, tmp_path: Path) -> Iterator[S3Server]:
    with running_s3(s3_kind, tmp_path / "s3") as server:
        yield server


@pytest.fixture
def media(s3_server: S3Server, tmp_path: Path) -> S3MediaStore:
    """The relay's store over the test bucket, with the relay's own client (`cluster.s3_client`)."""
    spool = tmp_path / "spool"
    spool.mkdir()
    return S3MediaStore(
        s3_client(s3_server.endpoint_url), MediaUrl(s3_server.bucket, "relay"), spool_dir=spool
    )
