from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from podstream.emulator import Emulator
from tests.podstream.emulator.support import Client, FakeWorker, Setup, config

Start = Callable[..., Awaitable[Setup]]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture
async def serve(http: httpx.AsyncClient) -> AsyncIterator[Start]:
    """`await serve(**config_changes)` starts an emulator (stopped after the test) with a client and a worker."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**changes: Any) -> Setup:
            emu = await stack.enter_async_context(Emulator(config(**changes)).serve())
            return Setup(emu, Client(emu, http), FakeWorker(emu, http))

        yield start
