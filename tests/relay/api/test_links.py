"""Short links (`POST /v1/jobs/{id}/links`, `POST /v1/links/{code}`) through real HTTP and websockets: a code
is traded for a read-only token of its job only, spent after its uses, refused when expired, and issued only
to an API key that may read the job."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from podstream.emulator import Emulator
from relay.api.auth import generate_key, hash_key
from relay.api.links import LinkCodes
from tests.relay.conftest import API_KEY, RelayServer, pack, recv, relay_settings, start_relay, ws_client

WRITE_KEY = generate_key()


@pytest.fixture
async def relay(tmp_path: Path, emulator: Emulator) -> AsyncIterator[RelayServer]:
    keys = f"{hash_key(API_KEY)},writer={hash_key(WRITE_KEY)}/jobs:write"
    server = await start_relay(relay_settings(tmp_path, emulator, api_keys=keys))
    try:
        yield server
    finally:
        await server.stop()


async def submit(server: RelayServer) -> str:
    async with server.http() as http:
        answer = await http.post(f"{server.url}/v1/jobs", json={"input": {"x": 1}})
        assert answer.status_code == 201, answer.text
        job: str = answer.json()["id"]
        return job


async def test_a_code_gives_a_read_only_token_for_its_job_once(relay: RelayServer) -> None:
    job, other = await submit(relay), await submit(relay)
    async with relay.http() as http:
        issued = await http.post(f"{relay.url}/v1/jobs/{job}/links", json={})
        assert issued.status_code == 201, issued.text
        link = issued.json()
        assert link["job"] == job and link["uses"] == 1
        assert len(link["code"]) <= 24 and "psk_" not in link["code"]
    async with httpx.AsyncClient(timeout=30) as anonymous:
        redeemed = await anonymous.post(f"{relay.url}/v1/links/{link['code']}")
        assert redeemed.status_code == 200, redeemed.text
        token = redeemed.json()["token"]
        assert redeemed.json()["job"] == job
        again = await anonymous.post(f"{relay.url}/v1/links/{link['code']}")
        assert again.status_code == 404
        assert again.json()["error"] == {
            "code": "link_not_found",
            "message": "this link is unknown, used up or expired: ask for a new one",
        }
        bearer = {"authorization": f"Bearer {token}"}
        assert (await anonymous.get(f"{relay.url}/v1/jobs/{job}", headers=bearer)).status_code == 200
        assert (await anonymous.get(f"{relay.url}/v1/jobs/{other}", headers=bearer)).status_code == 403
        assert (await anonymous.get(f"{relay.url}/v1/jobs", headers=bearer)).status_code == 403
        assert (
            await anonymous.post(f"{relay.url}/v1/jobs", headers=bearer, json={"input": {}})
        ).status_code == 403
    async with ws_client(relay.ws_url, token) as ws:
        await ws.send(pack({"t": "sub", "job": job, "from": 0}))
        assert (await recv(ws))["t"] == "subscribed"
        await ws.send(pack({"t": "sub", "job": other, "from": 0}))
        refused = await recv(ws)
        assert (refused["t"], refused["code"], refused["job"]) == ("err", "forbidden", other)


async def test_a_code_with_more_uses_and_a_lifetime(relay: RelayServer) -> None:
    job = await submit(relay)
    async with relay.http() as http:
        link = (await http.post(f"{relay.url}/v1/jobs/{job}/links", json={"uses": 2, "ttl_s": 600})).json()
        assert link["expires_at"] > 0
        first = await http.post(f"{relay.url}/v1/links/{link['code']}")
        second = await http.post(f"{relay.url}/v1/links/{link['code']}")
        third = await http.post(f"{relay.url}/v1/links/{link['code']}")
    assert [first.status_code, second.status_code, third.status_code] == [200, 200, 404]
    assert first.json()["expires_at"] <= link["expires_at"]


@pytest.mark.parametrize(
    ("key", "path", "body", "status", "code"),
    [
        (None, "JOB", {}, 401, "unauthorized"),
        ("bad", "JOB", {}, 401, "unauthorized"),
        ("writer", "JOB", {}, 403, "forbidden"),
        ("main", "no-such-job", {}, 404, "not_found"),
        ("main", "a..b", {}, 400, "bad_job_id"),
        ("main", "JOB", {"ttl_s": 0}, 400, "bad_ttl"),
        ("main", "JOB", {"ttl_s": 10**9}, 400, "bad_ttl"),
        ("main", "JOB", {"uses": 0}, 400, "bad_uses"),
        ("main", "JOB", {"uses": True}, 400, "bad_uses"),
        ("main", "JOB", [], 400, "bad_json"),
    ],
)
async def test_issuing_is_refused_with_the_reason(
    relay: RelayServer, key: str | None, path: str, body: object, status: int, code: str
) -> None:
    job = await submit(relay)
    keys = {"main": API_KEY, "writer": WRITE_KEY, "bad": generate_key()}
    headers = {"authorization": f"Bearer {keys[key]}"} if key else {}
    async with httpx.AsyncClient(headers=headers, timeout=30) as http:
        answer = await http.post(f"{relay.url}/v1/jobs/{path.replace('JOB', job)}/links", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert answer.json()["error"]["message"]


async def test_an_insecure_relay_links_without_tokens(tmp_path: Path, emulator: Emulator) -> None:
    server = await start_relay(relay_settings(tmp_path, emulator, insecure=True))
    try:
        job = await submit(server)
        async with server.http() as http:
            link = (await http.post(f"{server.url}/v1/jobs/{job}/links")).json()
            answer = (await http.post(f"{server.url}/v1/links/{link['code']}")).json()
        assert answer["job"] == job and answer["token"] is None
    finally:
        await server.stop()


def test_codes_expire_and_the_oldest_go_past_the_limit() -> None:
    now = [1000.0]
    codes = LinkCodes(limit=2, clock=lambda: now[0])
    first, _ = codes.issue("j1", "k", ttl_s=10, uses=5)
    second, _ = codes.issue("j2", "k", ttl_s=100, uses=5)
    third, _ = codes.issue("j3", "k", ttl_s=100, uses=5)
    assert len(codes) == 2 and codes.redeem(first) is None, "the oldest code made room"
    now[0] += 50
    redeemed = codes.redeem(second)
    assert redeemed is not None and redeemed.job == "j2" and redeemed.uses == 4
    now[0] += 60
    assert codes.redeem(third) is None, "expired"
    assert codes.redeem("made-up") is None
