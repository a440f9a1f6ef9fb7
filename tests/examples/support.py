"""Running an example handler the way a user would: the emulator spawns it as a real runpod SDK worker,
`podstream pull` (a real process) fetches the job, or `podstream submit` through a real relay process, and we
read what it wrote."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import difflib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench._relay_stack import free_port, wait_healthy
from podstream.emulator import Emulator, EmulatorConfig
from relay.api.auth import generate_key, hash_key

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
KEY = "example-key"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


@contextlib.contextmanager
def example_worker(script: Path, tmp: Path, env: dict[str, str] | None = None) -> Iterator[Emulator]:
    """The emulator (client key `KEY`, production body caps) with one SDK worker running `script`."""
    with Emulator(EmulatorConfig(endpoint_id="ep", api_key=KEY)).serve_in_thread() as emu:
        emu.spawn_workers(1, [sys.executable, str(script)], env=env or {}, cwd=tmp, log_dir=tmp)
        yield emu


def pull(emu: Emulator, job_input: Any, out: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`podstream pull --submit` as a user runs it; returns the process and the job's output directory."""
    job_file = out.parent / f"{out.name}-job.json"
    job_file.write_text(json.dumps({"input": job_input}))
    done = subprocess.run(
        [sys.executable, "-m", "podstream", "pull", "--submit", str(job_file), "--runpod-url", emu.endpoint_url,
         "--key", KEY, "--out", str(out), "--json", "--quiet"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip
    dirs = [p for p in out.iterdir() if p.is_dir()] if out.is_dir() else []
    assert len(dirs) == 1, (done.stdout, done.stderr)
    return done, dirs[0]


#: The API key of the relays `relay_in_front` starts.
RELAY_KEY = generate_key()


@contextlib.contextmanager
def relay_in_front(emu: Emulator, data: Path, *args: str) -> Iterator[str]:
    """`podstream relay` (a real process, with `args`) polling the emulator; yields its URL."""
    port = free_port()
    argv = [sys.executable, "-m", "podstream", "relay", "--runpod-url", emu.endpoint_url, "--port", str(port)]
    argv += ["--data-dir", str(data), "--fsync", "never", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODSTREAM_")}
    env.update(PODSTREAM_RUNPOD_KEY=KEY, PODSTREAM_API_KEYS=hash_key(RELAY_KEY))
    data.mkdir(parents=True, exist_ok=True)
    with (data / "relay.log").open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        asyncio.run(wait_healthy(url, timeout_s=60, process=process, log=data / "relay.log"))
        yield url
    finally:
        process.terminate()
        process.wait(30)


def submit(relay: str, job_input: Any, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`podstream submit --input` as a user runs it, through `relay`."""
    job_file = out.parent / f"{out.name}-job.json"
    job_file.write_text(json.dumps(job_input))
    return subprocess.run(
        [sys.executable, "-m", "podstream", "submit", "--input", str(job_file), "--relay", relay,
         "--key", RELAY_KEY, "--out", str(out), "--quiet", *args],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def run_until_done_is_refused(emu: Emulator, job_input: Any) -> dict[str, Any]:
    """Submit a job to the original handler and wait until RunPod refused its job-done POST; its status."""
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=30, headers=headers) as client:
        job_id = client.post(f"{emu.endpoint_url}/run", json={"input": job_input}).json()["id"]
        deadline = time.monotonic() + 240
        while emu.stats()["routes"].get("job-done", {}).get("statuses", {}).get("400", 0) == 0:
            assert time.monotonic() < deadline, "the worker never tried to return its result"
            time.sleep(0.2)
        status: dict[str, Any] = client.get(f"{emu.endpoint_url}/status/{job_id}").json()
        client.post(f"{emu.endpoint_url}/cancel/{job_id}")  # it would otherwise run to its timeout
        return status


def noise_png_base64(width: int, height: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def changed_lines(before: Path, after: Path) -> list[str]:
    """Lines removed or added between two files (a changed line counts once per side, as `diff` shows)."""
    diff = difflib.unified_diff(before.read_text().splitlines(), after.read_text().splitlines(), n=0)
    return [line for line in diff if line[:1] in "+-" and not line.startswith(("+++", "---"))]


def worker_log(tmp: Path, text: str) -> str:
    """The worker's log once it holds `text` (the SDK writes it just after the refused POST), or as it is."""
    deadline = time.monotonic() + 30
    while True:
        logs = "\n".join(p.read_text(errors="replace") for p in sorted(tmp.glob("worker-*.log")))
        if text in logs or time.monotonic() > deadline:
            return logs
        time.sleep(0.2)
