"""`podstream emulator`: the CLI serves, spawns workers, and stops them on SIGINT."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

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
        assert proc.wait(timeout=30) == 130  # Ctrl-C, as docs/cli.md says of every command (SIGTERM: 0)
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


def test_a_worker_command_that_fails_at_once_backs_off_then_stops_with_its_log(tmp_path: Path) -> None:
    """`python -m worker` outside the venv: restarts back off, then the emulator exits with the reason."""
    failing = (
        f"{sys.executable} -c 'import sys; print(\"No module named worker\", file=sys.stderr); sys.exit(3)'"
    )
    argv = [sys.executable, "-m", "podstream", "emulator", "--port", "0", "--workers", "1"]
    argv += ["--worker-cmd", failing, "--worker-log-dir", str(tmp_path), "--max-failed-starts", "3"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [
        line for line in result.stderr.splitlines() if line.startswith("podstream emulator: the worker")
    ]
    assert len(errors) == 1, result.stderr
    assert "exited 3 times in a row soon after starting (exit status 3); not restarting it" in errors[0]
    assert "  | No module named worker" in result.stderr  # the worker's own last log lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["worker-1.log", "worker-2.log", "worker-3.log"]
