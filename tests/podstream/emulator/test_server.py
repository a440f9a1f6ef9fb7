"""Emulator lifecycle: serve / serve_in_thread, addresses, worker env, shutdown releases long-polls."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from podstream.emulator import Emulator, EmulatorConfig
from tests.podstream.emulator.support import WORKER_KEY, config


def test_addresses_and_worker_env() -> None:
    emu = Emulator(config())
    with pytest.raises(RuntimeError):
        _ = emu.base_url
    with emu.serve_in_thread() as running:
        assert running is emu
        assert emu.base_url.startswith("http://127.0.0.1:")
        assert emu.endpoint_url == f"{emu.base_url}/v2/test"
        env = emu.worker_env("pod-7")
        assert env["RUNPOD_WEBHOOK_GET_JOB"] == f"{emu.endpoint_url}/job-take/$ID?gpu=CPU"
        assert env["RUNPOD_WEBHOOK_POST_OUTPUT"] == f"{emu.endpoint_url}/job-done/$RUNPOD_POD_ID/$ID?gpu=CPU"
        assert (
            env["RUNPOD_WEBHOOK_POST_STREAM"] == f"{emu.endpoint_url}/job-stream/$RUNPOD_POD_ID/$ID?gpu=CPU"
        )
        assert env["RUNPOD_WEBHOOK_PING"] == f"{emu.endpoint_url}/ping/$RUNPOD_POD_ID?gpu=CPU"
        assert env["RUNPOD_POD_ID"] == "pod-7" and env["RUNPOD_AI_API_KEY"] == WORKER_KEY
        assert env["RUNPOD_PING_INTERVAL"] == "1000"
        assert httpx.get(f"{emu.endpoint_url}/health", headers={"Authorization": "secret"}).status_code == 200
    with pytest.raises(RuntimeError):
        _ = emu.base_url


async def test_serve_twice_is_refused() -> None:
    emu = Emulator(config())
    async with emu.serve():
        with pytest.raises(RuntimeError):
            async with emu.serve():
                pass


def test_busy_port_raises() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        emu = Emulator(config())
        with pytest.raises(OSError), emu.serve_in_thread(port=sock.getsockname()[1]):
            pass


def test_stopping_answers_pending_long_polls() -> None:
    emu = Emulator(config(job_take_wait_s=60, stream_wait_default_ms=60_000))
    answers: list[int] = []
    with emu.serve_in_thread():
        url = emu.worker_env("p")["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", "p") + "&job_in_progress=0"

        def take() -> None:
            answers.append(httpx.get(url, headers={"Authorization": WORKER_KEY}, timeout=90).status_code)

        thread = threading.Thread(target=take)
        thread.start()
        time.sleep(0.3)
        started = time.monotonic()
    thread.join(30)
    assert answers == [204]
    assert time.monotonic() - started < 10


def test_config_validation() -> None:
    for bad in (
        {"endpoint_id": ""},
        {"endpoint_id": "a/b"},
        {"max_stream_item_bytes": 0},
        {"ping_interval_ms": 500},
    ):
        with pytest.raises(ValueError):
            EmulatorConfig(**bad)
    assert EmulatorConfig(api_key="k").effective_worker_key == "k"
    assert EmulatorConfig().with_changes(retention_run_s=5).retention_run_s == 5
