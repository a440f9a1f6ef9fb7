"""Property-based fuzz of the relay's whole HTTP API (schemathesis, from /openapi.json) and of its websocket
frames (hypothesis), against a real uvicorn relay with a finished job in it (issue 12 item 4).

Both assert what a user relies on: no 500 ever, only the statuses and close codes that are documented, and a
job that was there before is still whole afterwards. The CI form is short (`PODSTREAM_FUZZ_EXAMPLES`, 25 per
operation by default); `make chaos` runs it longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import schemathesis
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error, status_code_conformance
from schemathesis.core.result import Ok
from websockets.exceptions import ConnectionClosed

from podstream.emulator import Emulator
from podstream.frames import CloseCode
from relay.api import openapi, ws
from tests.relay.conftest import (
    API_KEY,
    Batch,
    Received,
    RelayServer,
    ScriptedWorker,
    consume,
    make_files,
    pack,
    recv,
    relay_settings,
    start_relay,
    ws_client,
)

EXAMPLES = int(os.environ.get("PODSTREAM_FUZZ_EXAMPLES", "25"))
AUTH = {"authorization": f"Bearer {API_KEY}"}
#: Close codes a client may see (docs/protocol.md): the relay's own, and 1009 for a message above uvicorn's cap.
CLOSE_CODES = {
    CloseCode.GOING_AWAY, CloseCode.SLOW_CONSUMER, CloseCode.PING_TIMEOUT, CloseCode.TOKEN_EXPIRED, CloseCode.TOO_MANY_CONNECTIONS, 4005,
    CloseCode.MALFORMED_FRAME, CloseCode.UNAUTHORIZED, CloseCode.FRAME_TOO_LARGE, CloseCode.TOO_MANY_SUBSCRIPTIONS, CloseCode.ORIGIN_NOT_ALLOWED, 1009,
}  # fmt: skip


async def finished_job(relay: RelayServer, worker: ScriptedWorker, files: list[bytes]) -> str:
    async with relay.http() as http:
        r = await http.post(f"{relay.url}/v1/jobs", json={"input": {}})
        assert r.status_code == 201, r.text
        job: str = r.json()["id"]
    taken = await worker.take()
    for envelope in Batch(taken["id"], files).envelopes:
        await worker.post(taken["id"], envelope)
    await worker.done(taken["id"])
    for _ in range(400):
        store = relay.relay.job(job)
        if store is not None and store.finished:
            return job
        await asyncio.sleep(0.05)
    raise AssertionError("the job did not finish")


async def assert_whole(relay: RelayServer, job: str, files: list[bytes]) -> None:
    """The job fuzzing ran beside: its manifest, its media over HTTP and over a websocket, all intact."""
    async with relay.http() as http:
        manifest = (await http.get(f"{relay.url}/v1/jobs/{job}")).json()
        assert manifest["status"] == "COMPLETED" and manifest["errors"] == []
        for entry, data in zip(manifest["items"], files, strict=True):
            assert (await http.get(entry["url"])).content == data
    async with ws_client(relay.ws_url, relay.token(job)) as sock:
        await sock.send(pack({"t": "sub", "job": job, "from": 0}))
        assert (await recv(sock))["t"] == "subscribed"
        got = await consume(sock, job, Received())
    assert [hashlib.sha256(got.files[i]).digest() for i in range(len(files))] == [
        hashlib.sha256(f).digest() for f in files
    ]


@pytest.mark.timeout(900)  # a shared CI machine can be slow; the examples are bounded, not timed
async def test_http_api_fuzz(tmp_path: Path, emulator: Emulator, worker: ScriptedWorker) -> None:
    relay = await start_relay(relay_settings(tmp_path, emulator, submits_per_minute=100_000))
    files = make_files(2, 5000)
    try:
        job = await finished_job(relay, worker, files)
        schema = schemathesis.openapi.from_dict(openapi.document())
        failures: list[str] = []
        statuses: list[int] = []
        for result in schema.get_all_operations():
            assert isinstance(result, Ok), result
            operation = result.ok()
            cases = st.one_of(
                operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE),
                operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE),
            )

            @settings(
                max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck),
            )  # fmt: skip
            @given(case=cases, keyed=st.booleans(), real_job=st.booleans())
            def fuzz(case: Any, keyed: bool, real_job: bool) -> None:
                if real_job and "job" in (case.path_parameters or {}):
                    case.path_parameters["job"] = job  # reach past the lookup, into the handlers
                headers = AUTH if keyed else {}
                response = case.call(base_url=relay.url, headers=headers, timeout=30)
                statuses.append(response.status_code)
                try:
                    case.validate_response(response, checks=[not_a_server_error, status_code_conformance])
                except AssertionError as exc:  # schemathesis' failures are AssertionErrors
                    failures.append(
                        f"{case.operation.label}: {response.status_code} {response.text[:200]} {exc}"
                    )
                    raise

            # the handlers run on this test's event loop: the synchronous client runs in a thread
            with contextlib.suppress(Exception):  # reported through `failures`, with every operation fuzzed
                await asyncio.to_thread(fuzz)
        assert failures == []
        assert len(statuses) >= len(openapi.paths()) * EXAMPLES // 2, "the fuzz hardly ran"
        assert len({s for s in statuses if s < 300}) >= 2 and len({s for s in statuses if s >= 400}) >= 3
        await assert_whole(relay, job, files)
        async with httpx.AsyncClient(timeout=30) as http:
            assert (await http.get(f"{relay.url}/healthz")).status_code == 200
    finally:
        await relay.stop()


def frames() -> st.SearchStrategy[bytes | str]:
    """Client frames: well-formed msgpack maps of every frame type with fuzzed fields, any msgpack value,
    random bytes, and text frames."""
    leaves = st.one_of(
        st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=40), st.binary(max_size=40),
    )  # fmt: skip
    values = st.recursive(
        leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )  # fmt: skip
    kinds = st.sampled_from(["auth", "sub", "unsub", "pong", "ping", "bye", "welcome", "", "x" * 300])
    typed = st.fixed_dictionaries(
        {"t": kinds},
        optional={"job": values | st.text(max_size=140), "from": values | st.integers(-5, 2**64 - 1),
                  "inline": values, "token": values | st.text(max_size=50), "n": values},
    )  # fmt: skip
    packed = (typed | values).map(lambda v: msgpack.packb(v, use_bin_type=True))
    return st.one_of(
        packed, st.binary(max_size=200), st.text(max_size=50), st.binary(min_size=70_000, max_size=70_001)
    )


@pytest.mark.timeout(900)
async def test_websocket_frame_fuzz(tmp_path: Path, emulator: Emulator, worker: ScriptedWorker) -> None:
    relay = await start_relay(relay_settings(tmp_path, emulator))
    files = make_files(2, 5000)
    try:
        job = await finished_job(relay, worker, files)
        token = relay.token(job)
        loop = asyncio.get_running_loop()
        codes: list[int] = []

        async def one(messages: list[bytes | str], authenticate: int) -> None:
            headers = AUTH if authenticate == 2 else {}
            async with websockets.connect(relay.ws_url, compression=None, additional_headers=headers) as sock:
                if authenticate == 1:
                    await sock.send(pack({"t": "auth", "token": token}))
                for message in messages:
                    await sock.send(message)
                await sock.send(pack({"t": "unsub", "job": "end-marker"}))  # then an answer or a close
                try:
                    while True:
                        raw = await asyncio.wait_for(sock.recv(), 10)
                        frame = msgpack.unpackb(raw) if isinstance(raw, bytes) else None
                        assert isinstance(frame, dict), raw
                        assert frame.get("t") != "err" or frame.get("code") != "internal", frame
                        if frame.get("t") == "err" and frame.get("job") == "end-marker":
                            return  # everything before it was answered without closing
                except ConnectionClosed as closed:
                    code = closed.rcvd.code if closed.rcvd is not None else 1006
                    codes.append(code)
                    assert code in CLOSE_CODES, (code, closed)

        @settings(
            max_examples=EXAMPLES * 4, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(messages=st.lists(frames(), min_size=1, max_size=4), authenticate=st.sampled_from([0, 1, 2]))
        def fuzz(messages: list[bytes | str], authenticate: int) -> None:
            asyncio.run_coroutine_threadsafe(one(messages, authenticate), loop).result(60)

        await asyncio.to_thread(fuzz)
        assert ws.INTERNAL not in codes
        await assert_whole(relay, job, files)
    finally:
        await relay.stop()
