"""`podstream relay` and `podstream jobs` as real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from bench._relay_stack import free_port, wait_healthy
from podstream.commands.jobs import format_table
from podstream.emulator import Emulator
from relay.api.auth import hash_key
from tests.relay.conftest import API_KEY, recv, ws_client


def podstream(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podstream", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_bad_settings_are_one_line_usage_errors(tmp_path: Path) -> None:
    result = podstream("relay", "--poll-wait-ms", "5", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "podstream relay: PODSTREAM_POLL_WAIT_MS must be between 1000 and 300000 (RunPod's range)"
    ]
    result = podstream("relay", env={"PODSTREAM_RUNPOD_URL": "ftp://x", "PODSTREAM_DATA_DIR": str(tmp_path)})
    assert result.returncode == 2 and "PODSTREAM_RUNPOD_URL" in result.stderr


def test_jobs_reports_an_unreachable_relay() -> None:
    result = podstream("jobs", "--relay", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1 and "cannot reach the relay" in result.stderr


async def test_relay_process_serves_lists_and_says_bye_on_sigterm(tmp_path: Path, emulator: Emulator) -> None:
    port = free_port()
    env = {**os.environ, "PODSTREAM_RUNPOD_KEY": "unused", "PODSTREAM_FSYNC": "never"}
    env["PODSTREAM_API_KEYS"] = hash_key(API_KEY)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "podstream", "relay", "--runpod-url", emulator.endpoint_url, "--data-dir",
        str(tmp_path / "data"), "--port", str(port), "--poll-wait-ms", "1000", "--log-level", "warning",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await wait_healthy(base, timeout_s=30, process=process)
            listing = await asyncio.to_thread(podstream, "jobs", "--relay", base, "--key", API_KEY)
            assert listing.returncode == 0 and listing.stdout.strip() == "no jobs"
            refused = await asyncio.to_thread(podstream, "jobs", "--relay", base)
            assert refused.returncode == 1 and "HTTP 401" in refused.stderr
            job = (await http.post(f"{emulator.endpoint_url}/run", json={"input": {}})).json()["id"]
            attached = await http.post(
                f"{base}/v1/jobs/{job}/attach", headers={"authorization": f"Bearer {API_KEY}"}
            )
            assert attached.status_code == 201
            listing = await asyncio.to_thread(podstream, "jobs", "--relay", base, "--key", API_KEY)
            lines = listing.stdout.strip().splitlines()
            assert lines[0].split() == ["JOB", "STATUS", "ITEMS", "ERRORS", "EVENTS", "AGE", "STATE"]
            assert lines[1].split()[0] == job and lines[1].split()[-1] == "polling"
        auth = {"authorization": f"Bearer {API_KEY}"}
        async with ws_client(f"ws://127.0.0.1:{port}/v1/ws", additional_headers=auth) as ws:
            process.send_signal(signal.SIGTERM)
            frame = await recv(ws)
            assert frame["t"] == "bye" and frame["code"] == 4000
        # uvicorn re-raises the signal it caught once it has shut down cleanly
        assert await asyncio.wait_for(process.wait(), 20) in (0, -signal.SIGTERM)
        stderr = (await process.stderr.read()).decode() if process.stderr else ""
        assert "Traceback" not in stderr, stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_format_table() -> None:
    table = format_table(
        [
            {
                "id": "a-1",
                "status": "COMPLETED",
                "items": 3,
                "errors": 0,
                "head": 9,
                "created_at": 0,
                "finished": True,
            }
        ],
        now=7200,
    )
    assert table.splitlines()[1].split() == ["a-1", "COMPLETED", "3", "0", "9", "2h", "done"]


def test_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    env = {"PODSTREAM_API_KEYS": "", "PODSTREAM_INSECURE": ""}
    result = podstream("relay", "--data-dir", str(tmp_path), env=env)
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert "no API keys configured" in line and "--generate-key" in line and "--insecure" in line
    result = podstream("relay", "--data-dir", str(tmp_path), "--api-keys", "psk_plain-key", env=env)
    assert result.returncode == 2 and "hash, not the key" in result.stderr


def test_generate_key() -> None:
    result = podstream("relay", "--generate-key")
    assert result.returncode == 0
    fields = {k: v.strip() for k, _, v in (line.partition(":") for line in result.stdout.splitlines()[:3])}
    assert fields["key"].startswith("psk_") and fields["entry"] == hash_key(fields["key"])
    scoped = podstream("relay", "--generate-key", "--scopes", "jobs:read+upload")
    entry = next(line for line in scoped.stdout.splitlines() if line.startswith("entry:")).split()[-1]
    assert entry.endswith("/jobs:read+upload")
    assert podstream("relay", "--generate-key", "--scopes", "root").returncode == 2


async def test_insecure_says_so_and_logs_json_with_job_ids(tmp_path: Path, emulator: Emulator) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PODSTREAM_RUNPOD_KEY": "unused",
        "PODSTREAM_FSYNC": "never",
        "PODSTREAM_API_KEYS": "",
        "PODSTREAM_INPUT_SCHEMA": "off",  # {"input": {}} is not a built-in worker's input
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "podstream", "relay", "--insecure", "--log-format", "json", "--runpod-url",
        emulator.endpoint_url, "--data-dir", str(tmp_path / "data"), "--port", str(port),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await wait_healthy(base, timeout_s=30, process=process)
            job = (await http.post(f"{base}/v1/jobs", json={"input": {}})).json()["id"]  # no key needed
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 20)
        assert process.stderr is not None
        lines = [json.loads(line) for line in (await process.stderr.read()).decode().splitlines() if line]
        warning = next(entry for entry in lines if "INSECURE" in entry["message"])
        assert warning["level"] == "warning" and "development only" in warning["message"]
        submitted = next(entry for entry in lines if entry["message"].startswith("submitted job"))
        assert submitted["job"] == job and submitted["logger"] == "podstream.relay"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_port_in_use_is_one_line_and_exit_1_and_logs_have_no_ansi(
    tmp_path: Path, emulator: Emulator
) -> None:
    env = {**os.environ, "PODSTREAM_RUNPOD_KEY": "unused", "PODSTREAM_API_KEYS": hash_key(API_KEY)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = (
            "relay",
            "--runpod-url",
            emulator.endpoint_url,
            "--data-dir",
            str(tmp_path / "d"),
            "--port",
            str(port),
        )
        done = await asyncio.to_thread(podstream, *args, env=env)
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert lines[-1] == f"podstream relay: cannot listen on 127.0.0.1:{port}: address already in use", lines
    assert "Traceback" not in done.stderr and "\x1b[" not in done.stderr
    # and a relay that does start logs its text lines without colour codes (stderr is not a terminal)
    free = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "podstream", "relay", "--runpod-url", emulator.endpoint_url, "--data-dir",
        str(tmp_path / "d2"), "--port", str(free), env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_healthy(f"http://127.0.0.1:{free}", timeout_s=30, process=process)
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 20)
        stderr = (await process.stderr.read()).decode() if process.stderr else ""
        assert "Uvicorn running on" in stderr or "Application startup complete" in stderr, stderr
        assert "\x1b[" not in stderr and "color_message" not in stderr, stderr
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_the_relay_says_where_it_listens_and_not_each_poll(tmp_path: Path, emulator: Emulator) -> None:
    """At the default level: the address it serves on, once ready; not one line per RunPod long poll."""
    port = free_port()
    env = {**os.environ, "PODSTREAM_RUNPOD_KEY": "unused", "PODSTREAM_FSYNC": "never"}
    env["PODSTREAM_API_KEYS"] = hash_key(API_KEY)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "podstream", "relay", "--runpod-url", emulator.endpoint_url, "--data-dir",
        str(tmp_path / "data"), "--port", str(port), "--poll-wait-ms", "1000",
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await wait_healthy(base, timeout_s=30, process=process)
            job = (await http.post(f"{emulator.endpoint_url}/run", json={"input": {}})).json()["id"]
            auth = {"authorization": f"Bearer {API_KEY}"}
            assert (await http.post(f"{base}/v1/jobs/{job}/attach", headers=auth)).status_code == 201
            for _ in range(150):  # the relay long-polls the job's /stream, a second a poll
                if emulator.stats()["routes"].get("stream", {}).get("requests", 0) >= 3:
                    break
                await asyncio.sleep(0.2)
            else:
                raise AssertionError("the relay never polled the job")
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), 20)
        assert process.stderr is not None
        lines = (await process.stderr.read()).decode().splitlines()
        assert any(line.endswith(f"INFO podstream.relay.serve: listening on {base}") for line in lines), lines
        assert not any("HTTP Request" in line for line in lines), lines
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
