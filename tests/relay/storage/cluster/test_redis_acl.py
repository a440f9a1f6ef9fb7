"""Replicas on a Redis that lets them in as a user limited to the relay's keys, with the ACL rules of the compose
file's Redis (docker-compose.yml, docs/cluster.md "Redis is trusted"): a job runs end to end on two replicas
(submit, poll, follow, media, link codes, readiness), while that user can touch no other key and run no
dangerous command, and nobody gets in without the password."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from bench._relay_stack import free_port
from podstream.emulator import Emulator
from relay.storage.cluster.settings import ClusterSettings
from tests.relay.conftest import RelayServer, ScriptedWorker, make_files, relay_settings
from tests.relay.storage.cluster.test_replica import run_job, start_replica, submit, subscriber
from tests.relay.storage.conftest import RedisServer, S3Server, stop

COMPOSE = Path(__file__).resolve().parents[4] / "docker-compose.yml"
PASSWORD = "acl-test-password-0123456789"


def compose_acl(password: str) -> list[str]:
    """The `--user ...` arguments of the compose file's redis-server, with `password` for the relays' user."""
    command = [str(a) for a in yaml.safe_load(COMPOSE.read_text())["services"]["redis"]["command"]]
    args: list[str] = []
    taking = False
    for arg in command:
        if arg.startswith("--"):
            taking = arg == "--user"
        if taking:
            args.append(arg.replace("${PODSTREAM_REDIS_PASSWORD:-podstream-local-only}", password))
    assert args.count("--user") == 2 and f">{password}" in args, args
    return args


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[RedisServer]:
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path), "--save", "",
         "--appendonly", "no", *compose_acl(PASSWORD)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        client = redis.Redis(
            host="127.0.0.1", port=port, username="podstream", password=PASSWORD, retry=Retry(NoBackoff(), 0)
        )
        with client:
            for _ in range(200):
                with contextlib.suppress(redis.ConnectionError):
                    if client.ping():
                        break
                assert process.poll() is None, "redis-server exited at start"
                time.sleep(0.05)
        yield RedisServer(process, port)
    finally:
        stop(process)


@pytest.fixture
async def two_replicas(
    tmp_path: Path, emulator: Emulator, acl_redis: RedisServer, s3_server: S3Server
) -> AsyncIterator[tuple[RelayServer, RelayServer]]:
    started: list[RelayServer] = []
    try:
        for name in ("a", "b"):
            cluster = ClusterSettings(
                redis_url=f"redis://podstream:{PASSWORD}@127.0.0.1:{acl_redis.port}/0",
                media_url=f"s3://{s3_server.bucket}/relay", s3_endpoint_url=s3_server.endpoint_url,
                replica_id=name, lease_ttl_s=2.0,
            )  # fmt: skip
            started.append(await start_replica(relay_settings(tmp_path / name, emulator), cluster))
        yield started[0], started[1]
    finally:
        for replica in reversed(started):
            with contextlib.suppress(Exception):
                await replica.stop()


def test_the_compose_redis_lets_the_relay_user_touch_its_own_keys_only(acl_redis: RedisServer) -> None:
    for username, password in ((None, None), ("podstream", "wrong")):
        client = redis.Redis(
            host="127.0.0.1",
            port=acl_redis.port,
            username=username,
            password=password,
            retry=Retry(NoBackoff(), 0),
        )
        with client, pytest.raises(redis.AuthenticationError):
            client.ping()
    with redis.Redis(host="127.0.0.1", port=acl_redis.port, username="podstream", password=PASSWORD) as user:
        assert user.set("podstream:mine", 1)
        with pytest.raises(redis.exceptions.NoPermissionError):
            user.set("someone-else:key", 1)
        for dangerous in (
            ("FLUSHALL",),
            ("CONFIG", "GET", "*"),
            ("KEYS", "*"),
            ("ACL", "LIST"),
            ("SHUTDOWN",),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                user.execute_command(*dangerous)


async def test_two_replicas_run_a_job_as_the_compose_redis_user(
    two_replicas: tuple[RelayServer, RelayServer], worker: ScriptedWorker
) -> None:
    a, b = two_replicas
    job = await submit(a)
    token = a.token(job)
    files = make_files(3, 20_000)
    following = asyncio.ensure_future(subscriber(b, job, token))
    await asyncio.sleep(0.3)
    await run_job(worker, job, files)
    got = await following
    assert got.records[-1]["k"] == "done" and got.records[-1]["status"] == "COMPLETED"
    assert [bytes(got.files[i]) for i in range(len(files))] == files
    async with a.http() as http:
        link = await http.post(f"{a.url}/v1/jobs/{job}/links", json={})
        assert link.status_code == 201, link.text
    async with httpx.AsyncClient(timeout=10) as anonymous:
        assert (await anonymous.post(f"{b.url}/v1/links/{link.json()['code']}")).status_code == 200
        for replica in (a, b):
            assert (await anonymous.get(f"{replica.url}/readyz")).status_code == 200
