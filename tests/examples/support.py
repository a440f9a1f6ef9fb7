"""Running an example handler the way a user would: the emulator spawns it as a real runpod SDK worker,
`podstream pull` (a real process) fetches the job, and we read what it wrote."""

from __future__ import annotations

import base64
import contextlib
import difflib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from podstream.emulator import Emulator, EmulatorConfig

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
