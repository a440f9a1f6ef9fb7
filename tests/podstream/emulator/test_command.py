"""`podstream emulator`: the CLI serves, spawns workers, and stops them on SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import httpx

from tests.podstream.emulator.support import gone


def test_serves_spawns_and_stops_workers() -> None:
    sleeper = f"{sys.executable} -c 'import time; time.sleep(120)'"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "podstream",
            "emulator",
            "--port",
            "0",
            "--endpoint-id",
            "cli",
            "--api-key",
            "k",
            "--workers",
            "1",
            "--worker-cmd",
            sleeper,
            "--print-env",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline().strip()
        assert first.startswith("podstream emulator: http://127.0.0.1:") and first.endswith("/v2/cli")
        url = first.split(": ", 1)[1]
        lines = [proc.stdout.readline().strip() for _ in range(13)]
        assert f"export RUNPOD_WEBHOOK_GET_JOB='{url}/job-take/$ID?gpu=CPU'" in lines
        started = next(line for line in lines if "started" in line)
        pid = int(started.split("pid ")[1].rstrip(")"))
        health = httpx.get(f"{url}/health", headers={"Authorization": "Bearer k"}).json()
        assert health["workers"]["initializing"] == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while not gone(pid):
            assert time.monotonic() < deadline, "the worker outlived the emulator"
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_usage_errors_exit_2() -> None:
    for args in (["--workers", "1"], ["--workers", "-1"], ["--ping-interval-ms", "10"], ["--port", "99999"]):
        result = subprocess.run(
            [sys.executable, "-m", "podstream", "emulator", *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("podstream emulator: ")
