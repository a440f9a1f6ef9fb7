"""Real servers for the backend tests: a `redis-server` process and moto's S3 server, on free loopback
ports, started and stopped by each fixture. Nothing in-process is mocked: the clients speak the protocols."""

from __future__ import annotations

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
from relay.backends.s3_media import MediaUrl, S3MediaStore

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class RedisServer:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)


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

    def client(self) -> Any:
        return boto3.session.Session().client("s3", endpoint_url=self.endpoint_url)


@pytest.fixture
def s3_server(aws_env: dict[str, str]) -> Iterator[S3Server]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        s3 = S3Server(f"http://127.0.0.1:{port}", "media")
        # moto keeps its buckets per process, not per server: start each test from an empty S3
        httpx.post(f"{s3.endpoint_url}/moto-api/reset").raise_for_status()
        s3.client().create_bucket(Bucket=s3.bucket)
        yield s3
    finally:
        server.stop()


@pytest.fixture
def media(s3_server: S3Server, tmp_path: Path) -> S3MediaStore:
    spool = tmp_path / "spool"
    spool.mkdir()
    return S3MediaStore(s3_server.client(), MediaUrl(s3_server.bucket, "relay"), spool_dir=spool)
