"""Request bodies over real sockets (relay/api/body_timeout.py and the app's handlers): a client that stalls
mid-body is answered 408 and its connection closed; one that disconnects mid-body is no error in the log;
a slow body that keeps arriving, and a streaming response after its body, are never cut."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from podstream.emulator import Emulator
from tests.relay.conftest import API_KEY, RelayServer, relay_settings, start_relay


@pytest.fixture
async def relay(tmp_path: Path, emulator: Emulator) -> AsyncIterator[RelayServer]:
    server = await start_relay(relay_settings(tmp_path, emulator, body_timeout_s=1.0))
    try:
        yield server
    finally:
        await server.stop()


def head(relay: RelayServer, length: int) -> bytes:
    return (
        f"POST /v1/jobs HTTP/1.1\r\nhost: 127.0.0.1:{relay.port}\r\nauthorization: Bearer {API_KEY}\r\n"
        f"content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    ).encode()


async def read_all(reader: asyncio.StreamReader, seconds: float) -> bytes:
    return await asyncio.wait_for(reader.read(), seconds)


async def test_a_body_that_stalls_is_answered_408_and_its_connection_closed(relay: RelayServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        writer.write(head(relay, 1000) + b'{"input": {')
        await writer.drain()
        start = time.monotonic()
        answer = await read_all(reader, 10)  # up to EOF: the relay closes the connection
        took = time.monotonic() - start
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b'"code":"body_timeout"' in answer
    assert 0.9 < took < 5, took


async def test_a_slow_body_that_keeps_arriving_is_taken(relay: RelayServer) -> None:
    body = b'{"input": {"prompt": "a slow client"}}'
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    try:
        writer.write(head(relay, len(body)))
        for i in range(0, len(body), 10):  # 4 chunks, 0.6 s apart: 1.8 s in all, each gap under 1 s
            writer.write(body[i : i + 10])
            await writer.drain()
            await asyncio.sleep(0.6)
        status = await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
    assert status.startswith(b"HTTP/1.1 201 "), status


async def test_a_client_gone_mid_body_is_no_error_in_the_log(
    relay: RelayServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(head(relay, 1000) + b'{"input": {')
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.5)
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not errors, [f"{r.name}: {r.getMessage()}" for r in errors]
    assert any("disconnected before its body was complete" in r.getMessage() for r in caplog.records)


async def test_a_response_streaming_after_its_body_is_not_cut(relay: RelayServer) -> None:
    """The body's deadline ends with the body: an SSE stream open for longer than it goes on."""
    async with relay.http() as http:
        job = (await http.post(f"{relay.url}/v1/jobs", json={"input": {}})).json()["id"]
        async with http.stream("GET", f"{relay.url}/v1/jobs/{job}/events") as events:
            assert events.status_code == 200
            lines = events.aiter_lines()
            assert await anext(lines) == "retry: 1000"
            quiet_until = time.monotonic() + 2.5  # past the 1 s deadline, twice
            with pytest.raises(TimeoutError):  # still open and quiet, not ended
                while True:
                    await asyncio.wait_for(anext(lines), quiet_until - time.monotonic())
