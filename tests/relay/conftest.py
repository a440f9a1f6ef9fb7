"""Fixtures for the relay tests: the RunPod emulator, a scripted worker, a real uvicorn relay, ws clients.

Relays run with auth on, as users run them: an API key (`API_KEY`, configured as its hash) and subscriber
tokens (`RelayServer.token(job)`). `relay_settings(..., insecure=True)` only where auth is beside the point.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection

from podstream import wire
from podstream.emulator import Emulator, EmulatorConfig
from relay import serve
from relay.api.app import create_app
from relay.api.auth import Principal, generate_key, hash_key
from relay.config import RelaySettings

#: The API key of every test relay (all scopes), and the secret its tokens are signed with.
API_KEY = generate_key()
TOKEN_SECRET = "test-token-secret-" + "s" * 32


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """The emulator with a heartbeat grace that a `ScriptedWorker` (which never pings) does not run into even
    on a loaded machine (the suite runs on several processes); a test of lost heartbeats sets its own."""
    config = EmulatorConfig.for_tests(heartbeat_grace_s=60.0)
    async with Emulator(config).serve(host="127.0.0.1", port=0) as emu:
        yield emu


class ScriptedWorker:
    """Plays a RunPod worker against the emulator over HTTP: take a job, POST envelopes, finish it."""

    def __init__(self, emu: Emulator, pod: str = "pod-1") -> None:
        self.emu = emu
        self.pod = pod
        self.http = httpx.AsyncClient(timeout=30)
        self.base = emu.endpoint_url

    async def take(self) -> dict[str, Any]:
        for _ in range(20):
            r = await self.http.get(f"{self.base}/job-take/{self.pod}", params={"gpu": "CPU"})
            if r.status_code == 200:
                job: dict[str, Any] = r.json()
                return job
        raise AssertionError("no job to take")

    async def post(self, job: str, envelope: object) -> None:
        r = await self.http.post(
            f"{self.base}/job-stream/{self.pod}/{job}", params={"gpu": "CPU", "isStream": "false"},
            json={"output": envelope},
        )  # fmt: skip
        r.raise_for_status()

    async def done(self, job: str, error: str | None = None) -> None:
        body: dict[str, Any] = {"output": []} if error is None else {"error": error}
        r = await self.http.post(f"{self.base}/job-done/{self.pod}/{job}", params={"gpu": "CPU"}, json=body)
        r.raise_for_status()

    async def close(self) -> None:
        await self.http.aclose()


@pytest.fixture
async def worker(emulator: Emulator) -> AsyncIterator[ScriptedWorker]:
    w = ScriptedWorker(emulator)
    try:
        yield w
    finally:
        await w.close()


@dataclass
class Batch:
    """The envelopes of a whole job run, built with podstream.wire.Envelopes."""

    job: str
    files: list[bytes]
    part_bytes: int = 64 * 1024
    progress: bool = True
    envelopes: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        env = wire.Envelopes(self.job)
        entries = []
        for i, data in enumerate(self.files):
            if self.progress:
                self.envelopes.append(env.progress(i, 1, 1))
            self.envelopes.extend(
                env.parts(i, data, mime="video/mp4", id=f"clip{i}", part_bytes=self.part_bytes)
            )
            entries.append(
                wire.ManifestItem(
                    i, f"clip{i}", "ok", "video/mp4", len(data), hashlib.sha256(data).hexdigest(),
                    wire.part_count(len(data), self.part_bytes),
                )
            )  # fmt: skip
        self.envelopes.extend(env.manifest(entries))


def make_files(n: int, size: int) -> list[bytes]:
    """n distinct files of about `size` bytes (random: nothing compresses or repeats)."""
    return [os.urandom(size + i) for i in range(n)]


@dataclass
class RelayServer:
    settings: RelaySettings
    server: uvicorn.Server
    task: asyncio.Task[None]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    app: Any

    @property
    def relay(self) -> Any:
        return self.app.state.relay

    @property
    def headers(self) -> dict[str, str]:
        """`Authorization` with the API key (empty for an insecure relay)."""
        return {} if self.settings.insecure else {"authorization": f"Bearer {API_KEY}"}

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client that sends the API key."""
        kwargs.setdefault("timeout", 30)
        return httpx.AsyncClient(headers=self.headers, **kwargs)

    def token(self, *jobs: str, ttl_s: float | None = None) -> str | None:
        """A subscriber token for `jobs`, as `POST /v1/jobs/{id}/tokens` mints it (None when insecure)."""
        minted = self.relay.auth.mint(Principal(name="tests", kind="key"), jobs, ttl_s)
        return None if minted is None else str(minted.token)

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 15)


async def start_relay(settings: RelaySettings, cluster: Any = None) -> RelayServer:
    """A relay on real uvicorn on a free port; `cluster` (ClusterSettings): as a replica on Redis and S3."""
    app = create_app(settings, cluster=cluster)
    server = serve.RelayServer(
        serve.uvicorn_config(app, settings, port=0, log_level="warning"), app.state.relay
    )
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
        raise AssertionError("relay did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    return RelayServer(settings, server, task, port, app)


def relay_settings(tmp_path: Path, emu: Emulator | None, **changes: Any) -> RelaySettings:
    values: dict[str, Any] = {
        "runpod_url": emu.endpoint_url if emu is not None else "", "data_dir": tmp_path / "data",
        "fsync": "never", "poll_wait_ms": 2000, "backoff_initial_s": 0.05, "backoff_max_s": 0.5,
        "send_timeout_s": 2.0, "api_keys": hash_key(API_KEY), "token_secret": TOKEN_SECRET,
        "input_schema": "off",  # scripted workers take any input; test_app checks the input schema itself
    }  # fmt: skip
    values.update(changes)
    return RelaySettings(**values)


@pytest.fixture
def backend() -> str:
    """Where `relay_server` keeps its jobs: "disk" (the default), "cluster" (a replica on a real redis-server
    and moto's S3 server) or "cluster-s3rver" (the same on s3rver). A test module runs on disk and cluster by
    overriding this fixture with `params=BACKENDS` (test_ws.py, test_app.py); a test whose outcome depends on
    the bucket runs on both S3 servers too (`@pytest.mark.parametrize("backend", BUCKET_BACKENDS)`)."""
    return "disk"


BACKENDS = ["disk", "cluster"]
#: BACKENDS and a cluster replica on s3rver: two independent S3 servers (tests/relay/storage/conftest.py).
BUCKET_BACKENDS = [*BACKENDS, "cluster-s3rver"]


@contextlib.contextmanager
def cluster_backend(tmp_path: Path, s3: str = "moto") -> Iterator[Any]:
    """ClusterSettings of a fresh redis-server and S3 server of kind `s3` ("moto" or "s3rver", with its
    bucket), stopped afterwards."""
    from relay.storage.cluster.settings import ClusterSettings
    from tests.relay.storage.conftest import AWS_ENV, running_s3, start_redis, stop

    saved = {name: os.environ.get(name) for name in AWS_ENV}
    os.environ.update(AWS_ENV)
    (tmp_path / "redis").mkdir()
    redis_server = start_redis(tmp_path / "redis")
    try:
        with running_s3(s3, tmp_path / "s3") as s3_server:
            yield ClusterSettings(
                redis_url=redis_server.url, media_url=f"s3://{s3_server.bucket}/relay",
                s3_endpoint_url=s3_server.endpoint_url, replica_id="test-replica",
                lease_ttl_s=10.0,  # renewed from the test's busy event loop: 2 s ran out on a loaded machine
            )  # fmt: skip
    finally:
        stop(redis_server.process)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def backend_cluster(backend: str, tmp_path: Path) -> Iterator[Any]:
    """The ClusterSettings a `backend` runs on (started and stopped here), or None for "disk"."""
    if backend == "disk":
        yield None
        return
    s3 = {"cluster": "moto", "cluster-s3rver": "s3rver"}[backend]
    with cluster_backend(tmp_path, s3) as cluster:
        yield cluster


@pytest.fixture
async def relay_server(tmp_path: Path, emulator: Emulator, backend: str) -> AsyncIterator[RelayServer]:
    with backend_cluster(backend, tmp_path) as cluster:
        server = await start_relay(relay_settings(tmp_path, emulator), cluster)
        try:
            yield server
        finally:
            await server.stop()


# ------------------------------------------------------------------------------------------ ws clients


def pack(frame: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(frame, use_bin_type=True)
    return data


async def recv(ws: ClientConnection, seconds: float = 10) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(), seconds)
    assert isinstance(raw, bytes)
    frame: dict[str, Any] = msgpack.unpackb(raw, raw=False)
    return frame


@contextlib.asynccontextmanager
async def ws_client(url: str, token: str | None = None, **kwargs: Any) -> AsyncIterator[ClientConnection]:
    """A websocket past `welcome`: sends `auth` with `token` first when one is given."""
    async with websockets.connect(url, compression=None, max_size=2**22, **kwargs) as ws:
        if token is not None:
            await ws.send(pack({"t": "auth", "token": token}))
        welcome = await recv(ws)
        assert welcome["t"] == "welcome", welcome
        yield ws


@dataclass
class Received:
    """What one subscriber applied: records in order and each item's bytes."""

    records: list[dict[str, Any]] = field(default_factory=list)
    files: dict[int, bytearray] = field(default_factory=dict)
    chunks: int = 0
    last_applied: int = 0
    closed_code: int | None = None

    @property
    def seqs(self) -> list[int]:
        return [r["seq"] for r in self.records]


async def consume(ws: ClientConnection, job: str, got: Received, *, seconds: float = 20) -> Received:
    """Apply frames for `job` until its `done` record (and the bytes of every item) arrived."""
    pending: dict[str, Any] | None = None
    while True:
        frame = await recv(ws, seconds)
        t = frame["t"]
        if t == "ping":
            await ws.send(pack({"t": "pong", "n": frame["n"]}))
        elif t == "ev":
            assert frame["job"] == job
            assert pending is None, "a record arrived before the previous item's bytes"
            got.records.append(frame)
            if frame["k"] == "item" and frame["url"].startswith("/v1/"):
                pending = frame
                got.files[frame["item"]] = bytearray()
            else:
                got.last_applied = frame["seq"]
            if frame["k"] == "done":
                return got
        elif t == "chunk":
            assert pending is not None and frame["seq"] == pending["seq"]
            buf = got.files[frame["item"]]
            assert frame["off"] == len(buf)
            buf.extend(frame["data"])
            got.chunks += 1
            if frame["last"]:
                assert len(buf) == pending["size"]
                pending = None
                got.last_applied = frame["seq"]
        elif t == "err":
            raise AssertionError(f"unexpected err frame: {frame}")
        elif t == "bye":
            got.closed_code = frame["code"]
            raise ConnectionAbortedError(frame["code"])


def sha(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def files() -> Iterator[list[bytes]]:
    yield make_files(3, 150_000)
