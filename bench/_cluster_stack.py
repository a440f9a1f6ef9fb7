"""Cluster mode through real processes: `redis-server`, moto's S3 server behind a TCP proxy that can be cut,
and `podstream relay` replicas on free loopback ports. Shared by bench/cluster.py and the replica failure
tests (tests/relay/storage/cluster/test_replicas.py).

Every replica runs `podstream relay --redis-url ... --media-url s3://media/relay --s3-endpoint-url PROXY`
with the same API key hash and token secret (as docs/deploy.md asks) and a short lease TTL. S3 traffic goes
through `CuttableProxy`: moto keeps its state inside the process that runs it, so "S3 unreachable" cannot be
a stopped server started again; the proxy refuses connections (and drops open ones) while cut instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis

from bench._relay_stack import free_port
from relay.api.auth import generate_key, hash_key

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
BUCKET = "media"
TOKEN_SECRET = "cluster-token-secret-" + "s" * 32


class RedisProcess:
    """`redis-server` on a fixed port and directory, so it can be stopped and started again as the same
    server (with `aof`: appendonly, appendfsync always, so a restart keeps every acknowledged write)."""

    def __init__(self, directory: Path, *, aof: bool = False) -> None:
        self.directory = directory
        self.port = free_port()
        self.aof = aof
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> None:
        durability = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        )
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
             "--save", "", *durability],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = self.client()
        try:
            for _ in range(400):
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if self.process.poll() is not None:
                        raise RuntimeError("redis-server exited at start") from None
                    time.sleep(0.025)
            raise RuntimeError("redis-server did not answer PING within 10 s")
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed on the way out (what AOF's appendfsync always is for)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class CuttableProxy:
    """A TCP forwarder on the test's event loop: `cut()` closes the listener and every open connection (a
    client then gets ECONNREFUSED, as from a store that is down), `restore()` listens on the same port again."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def restore(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port, reuse_address=True)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        self._writers -= {writer, up_writer}


class S3Server:
    """moto's S3 server on loopback with the bucket made, and the proxy in front of it the relays use."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer  # a dev dependency: only cluster runs need it

        self.port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.proxy = CuttableProxy(self.port)

    @property
    def direct_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        for name, value in AWS_ENV.items():
            os.environ.setdefault(name, value)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs every request
        self.server.start()
        async with httpx.AsyncClient() as http:
            # moto keeps buckets per process, not per server: each stack starts from an empty S3
            (await http.post(f"{self.direct_url}/moto-api/reset")).raise_for_status()
        self.client().create_bucket(Bucket=BUCKET)
        await self.proxy.restore()

    def client(self) -> Any:
        import boto3

        session = boto3.session.Session(
            aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            region_name=AWS_ENV["AWS_DEFAULT_REGION"],
        )
        return session.client("s3", endpoint_url=self.direct_url)

    async def stop(self) -> None:
        await self.proxy.cut()
        self.server.stop()


@dataclass
class Replica:
    """One `podstream relay` replica process (SIGKILLed or stopped at will; a fresh one is a new Replica)."""

    name: str
    port: int
    log: Path
    process: asyncio.subprocess.Process

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def kill(self) -> None:
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        if self.alive:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                await self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        """The end of its log, without httpx's line per RunPod request (one per poll: they drown the rest)."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(line for line in lines if "httpx: HTTP Request" not in line)[-chars:]


@dataclass
class ClusterStack:
    """Redis, S3 (behind its proxy) and the replicas started so far; `start_replica` adds one."""

    work: Path
    runpod_url: str
    redis: RedisProcess
    s3: S3Server
    lease_ttl_s: float
    runpod_key: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=list)
    api_key: str = field(default_factory=generate_key)
    started: int = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    @property
    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive]

    def env(self, name: str) -> dict[str, str]:
        return {
            **os.environ, **AWS_ENV, "PODSTREAM_API_KEYS": hash_key(self.api_key),
            "PODSTREAM_TOKEN_SECRET": TOKEN_SECRET, "PODSTREAM_RUNPOD_KEY": self.runpod_key,
            "PODSTREAM_LEASE_TTL_S": str(self.lease_ttl_s), "PODSTREAM_INPUT_SCHEMA": "off",
            "PODSTREAM_FSYNC": "never", "PODSTREAM_BACKOFF_MAX_S": "0.5", **self.extra_env,
        }  # fmt: skip

    async def start_replica(self, *args: str) -> Replica:
        self.started += 1  # before any await: replicas started side by side get names of their own
        name = f"r{self.started}"
        port = free_port()
        log = self.work / f"{name}.log"
        data = self.work / name
        data.mkdir(parents=True, exist_ok=True)
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "podstream", "relay", "--runpod-url", self.runpod_url,
                "--redis-url", self.redis.url, "--media-url", f"s3://{BUCKET}/relay",
                "--s3-endpoint-url", self.s3.proxy.url, "--replica-id", name, "--data-dir", str(data),
                "--port", str(port), "--poll-wait-ms", "1000", "--log-level", "info", *args,
                env=self.env(name), stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        finally:
            os.close(out)
        replica = Replica(name, port, log, process)
        self.replicas.append(replica)
        async with httpx.AsyncClient(timeout=2) as http:
            for _ in range(1200):
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"{replica.url}/readyz")).status_code == 200:
                        return replica
                if not replica.alive:
                    break
                await asyncio.sleep(0.05)
        raise RuntimeError(f"replica {name} did not become ready:\n{replica.log_tail()}")

    def poller(self, job: str) -> str | None:
        """The replica holding the job's poller lease in Redis (None: nobody holds it right now)."""
        from relay.storage.cluster.keys import Keys

        client = self.redis.client()
        try:
            value = client.get(Keys().lease(job))
        except redis.RedisError:
            return None
        finally:
            client.close()
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else str(value)
        holder, _, _token = text.rpartition("|")
        return holder

    def replica(self, name: str) -> Replica:
        return next(r for r in self.replicas if r.name == name)

    def logs(self) -> str:
        return "\n".join(
            f"----- {r.name} (exit {r.process.returncode})\n{r.log_tail()}" for r in self.replicas
        )

    async def stop(self) -> None:
        await asyncio.gather(*(r.stop() for r in self.replicas))


@contextlib.asynccontextmanager
async def cluster_stack(
    work: Path,
    runpod_url: str,
    *,
    lease_ttl_s: float = 2.0,
    aof: bool = False,
    runpod_key: str = "",
    env: dict[str, str] | None = None,
) -> AsyncIterator[ClusterStack]:
    """Redis and S3 started, no replica yet; everything stopped on the way out."""
    (work / "redis").mkdir(parents=True, exist_ok=True)
    redis_process = RedisProcess(work / "redis", aof=aof)
    s3 = S3Server()
    redis_process.start()
    try:
        await s3.start()
        stack = ClusterStack(work, runpod_url, redis_process, s3, lease_ttl_s, runpod_key, env or {})
        try:
            yield stack
        finally:
            await stack.stop()
            await s3.stop()
    finally:
        redis_process.stop()
