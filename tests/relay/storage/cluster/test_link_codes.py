"""Link codes in Redis (relay/storage/cluster/link_codes.py) on a real redis-server: issued by one replica, redeemed
on another, each use spent once across all of them, gone from Redis when they expire."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from podstream.emulator import Emulator
from relay.storage.cluster.keys import Keys
from relay.storage.cluster.link_codes import RedisLinkCodes
from relay.storage.cluster.settings import ClusterSettings
from tests.relay.conftest import RelayServer, relay_settings
from tests.relay.storage.cluster.test_replica import start_replica, submit
from tests.relay.storage.conftest import RedisServer, S3Server


def test_a_code_is_redeemed_for_its_uses_then_gone(rclient: redis.Redis) -> None:
    codes = RedisLinkCodes(rclient)
    code, link = codes.issue("job-1", "alice", ttl_s=60, uses=2)
    assert link.uses == 2
    first = codes.redeem(code)
    assert first is not None
    assert (first.job, first.issuer, first.expires, first.uses) == ("job-1", "alice", link.expires, 1)
    second = codes.redeem(code)
    assert second is not None and second.uses == 0
    assert codes.redeem(code) is None, "used up"
    assert not rclient.exists(Keys().link(code)), "its last use deleted it"
    assert codes.redeem("made-up") is None
    assert codes.redeem("no/such:key*") is None, "not a code: not looked up"


def test_a_code_expires_with_its_key(rclient: redis.Redis) -> None:
    codes = RedisLinkCodes(rclient, clock=lambda: 1000.0)
    code, _ = codes.issue("job-1", "alice", ttl_s=60, uses=5)
    assert rclient.exists(Keys().link(code)) == 0, "expired in Redis: the test clock is decades behind"
    real = RedisLinkCodes(rclient)
    code, link = real.issue("job-1", "alice", ttl_s=60, uses=5)
    ttl_ms = rclient.pttl(Keys().link(code))
    assert 59_000 < ttl_ms <= 60_001, "Redis drops it when it expires"
    late = RedisLinkCodes(rclient, clock=lambda: link.expires + 1)
    assert late.redeem(code) is None, "expired by the replica's clock too"


def test_a_one_time_code_redeemed_at_once_from_many_clients_is_redeemed_once(
    redis_server: RedisServer,
) -> None:
    clients = [redis_server.client() for _ in range(8)]
    try:
        code, _ = RedisLinkCodes(clients[0]).issue("job-1", "alice", ttl_s=60, uses=1)
        with ThreadPoolExecutor(len(clients)) as pool:
            answers = list(pool.map(lambda c: RedisLinkCodes(c).redeem(code), clients * 4))
        assert sum(a is not None for a in answers) == 1
    finally:
        for client in clients:
            client.close()


@pytest.fixture
async def two_replicas(
    tmp_path: Path, emulator: Emulator, redis_server: RedisServer, s3_server: S3Server
) -> AsyncIterator[tuple[RelayServer, RelayServer]]:
    started: list[RelayServer] = []
    try:
        for name in ("a", "b"):
            cluster = ClusterSettings(
                redis_url=redis_server.url, media_url=f"s3://{s3_server.bucket}/relay",
                s3_endpoint_url=s3_server.endpoint_url, replica_id=name, lease_ttl_s=2.0,
            )  # fmt: skip
            started.append(await start_replica(relay_settings(tmp_path / name, emulator), cluster))
        yield started[0], started[1]
    finally:
        for replica in reversed(started):
            with contextlib.suppress(Exception):
                await replica.stop()


async def test_a_code_issued_on_one_replica_is_redeemed_on_another_once(
    two_replicas: tuple[RelayServer, RelayServer],
) -> None:
    a, b = two_replicas
    job = await submit(a)
    async with a.http() as http:
        issued = await http.post(f"{a.url}/v1/jobs/{job}/links", json={})
        assert issued.status_code == 201, issued.text
        many = await http.post(f"{a.url}/v1/jobs/{job}/links", json={"uses": 3})
        assert many.status_code == 201, many.text
    code = issued.json()["code"]
    async with httpx.AsyncClient(timeout=30) as anonymous:
        redeemed = await anonymous.post(f"{b.url}/v1/links/{code}")
        assert redeemed.status_code == 200, redeemed.text
        assert redeemed.json()["job"] == job
        bearer = {"authorization": f"Bearer {redeemed.json()['token']}"}
        assert (await anonymous.get(f"{b.url}/v1/jobs/{job}", headers=bearer)).status_code == 200
        assert (await anonymous.get(f"{a.url}/v1/jobs/{job}", headers=bearer)).status_code == 200
        for replica in (a, b):
            again = await anonymous.post(f"{replica.url}/v1/links/{code}")
            assert again.status_code == 404 and again.json()["error"]["code"] == "link_not_found"
        # a 3-use code asked for 10 times at once, on both replicas: 3 tokens
        three = many.json()["code"]
        answers = await asyncio.gather(
            *(anonymous.post(f"{(a, b)[i % 2].url}/v1/links/{three}") for i in range(10))
        )
        assert sorted(r.status_code for r in answers) == [200] * 3 + [404] * 7
