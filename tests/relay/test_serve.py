"""relay.serve: the relay as a real process under a low RLIMIT_NOFILE, flooded with connections that never
send a request, keeps serving real clients and its job (issue 12 items 1 and 5, the connection part)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets

from bench._relay_stack import free_port, wait_healthy
from podstream.emulator import Emulator, EmulatorConfig
from relay.api.auth import hash_key
from relay.api.limits import fd_budget
from tests.relay.conftest import (
    API_KEY,
    TOKEN_SECRET,
    Batch,
    Received,
    ScriptedWorker,
    consume,
    make_files,
    pack,
    recv,
    ws_client,
)

FD_LIMIT = 256
AUTH = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """The emulator with a long heartbeat grace: the scripted worker posts 80 envelopes without pinging."""
    config = EmulatorConfig.for_tests(heartbeat_grace_s=120.0)
    async with Emulator(config).serve(host="127.0.0.1", port=0) as emu:
        yield emu


@contextlib.asynccontextmanager
async def relay_process(tmp_path: Path, emulator: Emulator, **env: str) -> AsyncIterator[tuple[str, Path]]:
    """`podstream relay` under `prlimit --nofile=256`; yields (base URL, its stderr file)."""
    port = free_port()
    stderr = tmp_path / "relay.stderr"
    full_env = {
        **os.environ, "PODSTREAM_RUNPOD_KEY": "unused", "PODSTREAM_FSYNC": "never",
        "PODSTREAM_API_KEYS": hash_key(API_KEY), "PODSTREAM_TOKEN_SECRET": TOKEN_SECRET,
        "PODSTREAM_INPUT_SCHEMA": "off", **env,
    }  # fmt: skip
    with stderr.open("wb") as err:
        process = await asyncio.create_subprocess_exec(
            "prlimit", f"--nofile={FD_LIMIT}:{FD_LIMIT}", sys.executable, "-m", "podstream", "relay",
            "--runpod-url", emulator.endpoint_url, "--data-dir", str(tmp_path / "data"), "--port", str(port),
            "--poll-wait-ms", "1000", "--log-level", "warning", env=full_env, stderr=err,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(base, timeout_s=30, process=process, log=stderr)
        yield base, stderr
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


async def closed_by_server(reader: asyncio.StreamReader, seconds: float = 60) -> bool:
    """True once the server closed (EOF or reset) a connection that never completed a request."""
    try:
        while await asyncio.wait_for(reader.read(65536), seconds):
            pass  # e.g. nothing: the relay sends no response to an incomplete request
    except (ConnectionError, OSError):
        pass
    except TimeoutError:
        return False
    return True


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit")
async def test_idle_connection_flood_under_a_low_fd_limit(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    env = {"PODSTREAM_HEADER_TIMEOUT_S": "2", "PODSTREAM_AUTH_TIMEOUT_S": "2"}
    files = make_files(40, 30_000)
    async with relay_process(tmp_path, emulator, **env) as (base, stderr):
        async with httpx.AsyncClient(timeout=60, headers=AUTH) as http:
            created = await http.post(f"{base}/v1/jobs", json={"input": {}})
            assert created.status_code == 201, created.text
            job = created.json()["id"]

            # The flood: far more connections than the relay has descriptors, none sends a request;
            # some trickle half a request line, some are websockets that never authenticate.
            flood: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            for _ in range(FD_LIMIT + 150):
                with contextlib.suppress(OSError, TimeoutError):
                    flood.append(
                        await asyncio.wait_for(
                            asyncio.open_connection("127.0.0.1", int(base.rsplit(":", 1)[1])), 10
                        )
                    )
            assert len(flood) > FD_LIMIT
            for _reader, writer in flood[-40:]:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            unauthenticated = []
            for _ in range(40):
                with contextlib.suppress(OSError, TimeoutError, websockets.InvalidHandshake):
                    unauthenticated.append(await websockets.connect(base.replace("http", "ws") + "/v1/ws"))

            # Real clients meanwhile: liveness, the job's ingest and a subscriber.
            assert (await http.get(f"{base}/healthz")).status_code == 200
            taken = await worker.take()
            batch = Batch(taken["id"], files)
            for envelope in batch.envelopes:
                await worker.post(taken["id"], envelope)
            await worker.done(taken["id"])
            async with ws_client(base.replace("http", "ws") + "/v1/ws", additional_headers=AUTH) as ws:
                await ws.send(pack({"t": "sub", "job": job, "from": 0}))
                assert (await recv(ws, 30))["t"] == "subscribed"
                got = await consume(ws, job, Received(), seconds=60)
            errors = [r for r in got.records if r["k"] == "error"]
            assert not errors, ([(e["code"], e["message"]) for e in errors[:3]], stderr.read_text()[-3000:])
            assert {i: bytes(b) for i, b in got.files.items()} == dict(enumerate(files))

            ready = (await http.get(f"{base}/readyz")).json()
            assert ready["fd_limit"] == FD_LIMIT and 0 < ready["open_fds"] < FD_LIMIT

            # Every flood connection was closed by the relay (idle ones after header_timeout_s, or earlier
            # to make room); the websockets without auth were told 4501 or 4004.
            closed = await asyncio.gather(*(closed_by_server(reader) for reader, _w in flood))
            assert all(closed), f"{closed.count(False)} idle connections still open"
            for ws in unauthenticated:
                with contextlib.suppress(websockets.ConnectionClosed):
                    while (frame := await recv(ws, 30))["t"] == "ping":
                        pass
                    assert frame["t"] == "bye" and frame["code"] in (4004, 4501), frame
                await ws.close()
            for _reader, writer in flood:
                writer.close()
            manifest = (await http.get(f"{base}/v1/jobs/{job}")).json()
            assert manifest["status"] == "COMPLETED" and len(manifest["items"]) == len(files)
        log = stderr.read_text()
        assert "Too many open files" not in log and "Traceback" not in log, log[-3000:]


def test_fd_budget_keeps_a_reserve() -> None:
    assert fd_budget(256, 0) == 192  # 64 kept for journals, media and RunPod calls
    assert fd_budget(65536, 0) == 65536 - 8192
    assert fd_budget(1024, 100) == 924
    assert fd_budget(16, 0) == 8


async def test_a_websocket_outlives_the_header_deadline(tmp_path: Path, emulator: Emulator) -> None:
    """The header deadline is for HTTP requests: an upgraded websocket is not closed by it."""
    from tests.relay.conftest import relay_settings, start_relay

    settings = relay_settings(tmp_path, emulator, header_timeout_s=0.2, insecure=True)
    relay = await start_relay(settings)
    try:
        async with ws_client(relay.ws_url) as ws:
            await asyncio.sleep(5 * settings.header_timeout_s)  # well past the deadline, idle
            await ws.send(pack({"t": "sub", "job": "no-such-job", "from": 0}))
            frame = await recv(ws)
            assert frame["t"] == "err" and frame["code"] == "not_found", frame  # and the socket is open
    finally:
        await relay.stop()
