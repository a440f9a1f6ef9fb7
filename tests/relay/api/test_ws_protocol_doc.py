"""`WS /v1/ws` as docs/protocol.md describes its finer points: what `subscribed` says before the first poll,
the optional fields of `sub`, `auth` with an API key, a refresh `auth` (no reply), a second `sub` to the
same job, and `unsub` after `done`. Real uvicorn, real `websockets` clients, the emulator."""

from __future__ import annotations

import asyncio

import websockets

from podstream.emulator import Emulator
from tests.relay.conftest import (
    API_KEY,
    Batch,
    RelayServer,
    ScriptedWorker,
    make_files,
    pack,
    recv,
    ws_client,
)


async def new_job(relay: RelayServer) -> str:
    async with relay.http() as http:
        answer = await http.post(f"{relay.url}/v1/jobs", json={"input": {}})
        assert answer.status_code == 201, answer.text
        job: str = answer.json()["id"]
        return job


async def finished_job(relay: RelayServer, worker: ScriptedWorker, items: int = 2) -> str:
    job = await new_job(relay)
    taken = await worker.take()
    for envelope in Batch(taken["id"], make_files(items, 40_000)).envelopes:
        await worker.post(job, envelope)
    await worker.done(job)
    for _ in range(400):
        if relay.relay.job(job).finished:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError("the job never finished")


async def until(ws: websockets.ClientConnection, kind: str, **fields: object) -> dict[str, object]:
    """The next frame of type `kind` (with `fields`), skipping pings, events and chunks before it."""
    while True:
        frame = await recv(ws)
        if frame["t"] == kind and all(frame.get(k) == v for k, v in fields.items()):
            return frame
        assert frame["t"] in ("ping", "ev", "chunk", "subscribed"), frame


async def quiet(ws: websockets.ClientConnection, seconds: float = 0.5) -> list[dict[str, object]]:
    """Every frame but pings within `seconds` (nothing, when the relay has nothing to say)."""
    frames = []
    try:
        while True:
            frame = await recv(ws, seconds)
            if frame["t"] != "ping":
                frames.append(frame)
    except TimeoutError:
        return frames


async def test_status_is_empty_before_the_first_poll_and_from_is_optional(
    relay_server: RelayServer, emulator: Emulator
) -> None:
    emulator.faults.stream_delay_s = 3.0  # RunPod's first /stream answer (and its status) is late
    job = await new_job(relay_server)
    async with ws_client(relay_server.ws_url, relay_server.token(job)) as ws:
        await ws.send(pack({"t": "sub", "job": job}))  # no `from`, no `inline`: from 0, inline
        subscribed = await recv(ws)
        assert subscribed["t"] == "subscribed" and subscribed["status"] == "" and subscribed["head"] == 0
        assert subscribed["recovered"] is True


async def test_auth_takes_an_api_key_and_a_refresh_gets_no_reply(
    relay_server: RelayServer, worker: ScriptedWorker
) -> None:
    job = await finished_job(relay_server, worker)
    async with ws_client(relay_server.ws_url, API_KEY) as ws:  # `auth {token: <API key>}`
        await ws.send(pack({"t": "sub", "job": job, "from": 0, "inline": False}))
        assert (await recv(ws))["t"] == "subscribed"
        await until(ws, "ev", k="done")
        await ws.send(pack({"t": "auth", "token": "anything"}))  # a key's connection: ignored
        assert await quiet(ws) == []
    other = await new_job(relay_server)
    async with ws_client(relay_server.ws_url, relay_server.token(job, other)) as ws:
        await ws.send(pack({"t": "auth", "token": relay_server.token(job, other, ttl_s=7200)}))
        assert await quiet(ws) == []  # accepted: no second welcome, nothing
        await ws.send(pack({"t": "sub", "job": other, "from": 0}))
        assert (await recv(ws))["t"] == "subscribed"
        await ws.send(pack({"t": "auth", "token": relay_server.token(job)}))  # no longer covers `other`
        assert await quiet(ws) == [
            {
                "t": "err",
                "code": "forbidden",
                "message": "the new token does not allow this job",
                "job": other,
            }
        ]


async def test_a_second_sub_changes_nothing_and_unsub_after_done_is_not_subscribed(
    relay_server: RelayServer, worker: ScriptedWorker
) -> None:
    job = await finished_job(relay_server, worker, items=3)
    head = relay_server.relay.job(job).journal.published
    async with ws_client(relay_server.ws_url, relay_server.token(job)) as ws:
        await ws.send(pack({"t": "sub", "job": job, "from": 0}))
        await ws.send(pack({"t": "sub", "job": job, "from": 2}))
        seqs: list[int] = []
        errors: list[str] = []
        while not seqs or seqs[-1] != head:
            frame = await recv(ws)
            if frame["t"] == "ev":
                seqs.append(frame["seq"])
            elif frame["t"] == "err":
                errors.append(frame["code"])
        assert seqs == list(range(1, head + 1)), "the first subscription, from its own `from`, once"
        assert errors == ["already_subscribed"]
        # after `done` the subscription has ended by itself
        await ws.send(pack({"t": "unsub", "job": job}))
        assert await quiet(ws) == [
            {"t": "err", "code": "not_subscribed", "message": "no subscription to this job", "job": job}
        ]
        # and a new `sub` replays from its `from`
        await ws.send(pack({"t": "sub", "job": job, "from": head - 1, "inline": False}))
        assert (await recv(ws))["t"] == "subscribed"
        assert (await until(ws, "ev"))["seq"] == head


async def test_unsub_of_a_live_subscription_has_no_reply(
    relay_server: RelayServer, worker: ScriptedWorker
) -> None:
    job = await new_job(relay_server)  # never finishes while we watch
    async with ws_client(relay_server.ws_url, relay_server.token(job)) as ws:
        await ws.send(pack({"t": "sub", "job": job, "from": 0}))
        assert (await recv(ws))["t"] == "subscribed"
        await ws.send(pack({"t": "unsub", "job": job}))
        assert [f for f in await quiet(ws) if f["t"] != "ev"] == []
        await ws.send(pack({"t": "sub", "job": job, "from": 0}))  # subscribed again: it was ended
        assert (await until(ws, "subscribed"))["job"] == job
