"""`python -m worker` as a real process: `--once` locally, and the real SDK worker loop against the emulator."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from podstream import wire
from podstream.emulator import Emulator, EmulatorConfig
from tests.worker.support import SERVED_PNG, decode_video, png_base64, serve_images

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


def run_worker(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    import os

    full = {**os.environ, "PODSTREAM_MODEL": "tiny", **(env or {})}
    full.pop("RUNPOD_WEBHOOK_GET_JOB", None)
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_once_writes_verified_files_and_reports_bad_items(tmp_path: Path) -> None:
    job = {
        "input": {
            "task": "image-to-video",
            "items": [{"image": png_base64(), "id": "first"}, {"image": "???", "id": "broken"}],
            "params": {"frames": 8, "width": 64, "height": 64, "steps": 2},
        }
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    out = tmp_path / "out"
    done = run_worker("-m", "worker", "--once", str(tmp_path / "job.json"), "--out", str(out))
    assert done.returncode == 1, done.stderr  # one item failed
    assert f"item 0: {out / '00000-first.mp4'}" in done.stdout
    assert "item 1: FAILED bad_image: input.items[1].image:" in done.stdout
    assert decode_video((out / "00000-first.mp4").read_bytes()) == (8, 64, 64, "h264")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"] == {"0": "00000-first.mp4"} and list(manifest["errors"]) == ["1"]
    assert manifest["problems"] == []


def test_a_lossless_mp4_job_is_encoded(tmp_path: Path) -> None:
    """`output.crf: 0` (docs/worker.md: 0..51) makes a lossless MP4 through the real worker, not `encode_failed`."""
    job = {
        "task": "text-to-video",
        "items": [{"id": "fox", "prompt": "a fox"}],
        "params": {"frames": 9, "width": 64, "height": 64, "steps": 1},
        "output": {"format": "mp4", "crf": 0},
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    out = tmp_path / "out"
    done = run_worker("-m", "worker", "--once", str(tmp_path / "job.json"), "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    data = (out / "00000-fox.mp4").read_bytes()
    assert decode_video(data) == (9, 64, 64, "h264")
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].codec_context.profile == "High 4:4:4 Predictive"


def test_a_malformed_job_and_a_missing_runpod_env_are_usage_errors(tmp_path: Path) -> None:
    (tmp_path / "job.json").write_text(
        json.dumps({"task": "text-to-image", "items": [{"prompt": "x"}], "steps": 3})
    )
    done = run_worker(
        "-m", "podstream", "worker", "--once", str(tmp_path / "job.json"), "--out", str(tmp_path)
    )
    assert done.returncode == 2
    assert done.stderr.strip().endswith("podstream worker: invalid job input: input.steps: unknown field")
    done = run_worker("-m", "worker")
    assert done.returncode == 2
    assert "RUNPOD_WEBHOOK_GET_JOB is not set" in done.stderr and "--once" in done.stderr


def test_the_worker_reads_its_limits_from_the_environment(tmp_path: Path) -> None:
    job = {"task": "text-to-image", "items": [{"prompt": "a"}, {"prompt": "b"}], "params": {"steps": 2}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    once = ("-m", "worker", "--once", str(tmp_path / "job.json"), "--out", str(tmp_path / "out"))
    done = run_worker(*once, env={"PODSTREAM_MAX_ITEMS": "1"})
    assert done.returncode == 2
    assert done.stderr.strip().endswith("worker: invalid job input: input.items: 2 items, at most 1 per job")
    done = run_worker(
        *once, env={"PODSTREAM_INPUT_HOSTS": "http://relay:8700"}
    )  # stops before the model loads
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "worker: PODSTREAM_INPUT_HOSTS='http://relay:8700' is not a list of host or host:port entries: "
        "'http://relay:8700' is not host, host:port or [ipv6]:port (no scheme or path: relay:8700)"
    )


def test_input_hosts_let_the_worker_fetch_from_a_listed_private_host(tmp_path: Path) -> None:
    with serve_images() as listed, serve_images() as other:
        items = [
            {"image": f"{listed}/ok.png", "image_sha256": hashlib.sha256(SERVED_PNG).hexdigest()},
            {"image": f"{other}/ok.png"},
        ]
        job = {
            "task": "image-to-video",
            "items": items,
            "params": {"frames": 8, "width": 64, "height": 64, "steps": 2},
        }
        (tmp_path / "job.json").write_text(json.dumps(job))
        out = tmp_path / "out"
        env = {"PODSTREAM_INPUT_HOSTS": listed.removeprefix("http://"), "PODSTREAM_ALLOW_PRIVATE_URLS": ""}
        done = run_worker("-m", "worker", "--once", str(tmp_path / "job.json"), "--out", str(out), env=env)
    assert done.returncode == 1, done.stderr  # the item from the other port failed
    assert f"item 0: {out / '00000.mp4'}" in done.stdout
    assert decode_video((out / "00000.mp4").read_bytes()) == (8, 64, 64, "h264")
    assert (
        f"item 1: FAILED url_refused: input.items[1].image: GET {other}/ok.png refused: 127.0.0.1 is a loopback "
        f"address. To let the worker fetch from this host, set PODSTREAM_INPUT_HOSTS={other.removeprefix('http://')}"
    ) in done.stdout


def poll_stream(client: httpx.Client, endpoint: str, job_id: str, assembler: wire.Assembler) -> str:
    """Drain /stream like a consumer: until the status is terminal and nothing more is buffered."""
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        body = client.get(f"{endpoint}/stream/{job_id}", params={"wait": 2000}).json()
        for chunk in body.get("stream", []):
            assembler.feed(chunk["output"])
        if body["status"] in TERMINAL and not body.get("stream"):
            return str(body["status"])
    raise AssertionError(f"job {job_id} did not finish")


def test_the_real_sdk_worker_streams_a_job_through_the_emulator(tmp_path: Path) -> None:
    items: list[Any] = [{"image": png_base64(seed=i), "id": f"v{i}", "seed": i} for i in range(3)]
    items.insert(1, {"image": "not-an-image", "id": "bad"})
    job = {
        "task": "image-to-video",
        "items": items,
        "params": {"frames": 8, "width": 64, "height": 64, "steps": 2},
    }
    with Emulator(EmulatorConfig(ping_interval_ms=2000)).serve_in_thread() as emu:
        emu.spawn_workers(
            1, [sys.executable, "-m", "worker"], env={"PODSTREAM_MODEL": "tiny"}, cwd=ROOT, log_dir=tmp_path
        )
        with httpx.Client(timeout=30) as client:
            job_id = client.post(f"{emu.endpoint_url}/run", json={"input": job}).json()["id"]
            assembler = wire.Assembler(job_id)
            try:
                status = poll_stream(client, emu.endpoint_url, job_id, assembler)
            except AssertionError:
                pytest.fail(
                    "no result; worker log:\n"
                    + "\n".join(p.read_text()[-3000:] for p in tmp_path.glob("*.log"))
                )
            assert status == "COMPLETED"
            assert assembler.finish() == []
            assert sorted(assembler.completed) == [0, 2, 3]
            assert assembler.failed[1].code == "bad_image"
            for item in (0, 2, 3):
                assert decode_video(assembler.completed[item].result) == (8, 64, 64, "h264")

            # A malformed job: FAILED, with the reason on /status, and the worker takes the next job.
            bad = client.post(
                f"{emu.endpoint_url}/run", json={"input": {"task": "image-to-video", "items": []}}
            )
            bad_id = bad.json()["id"]
            assert poll_stream(client, emu.endpoint_url, bad_id, wire.Assembler(bad_id)) == "FAILED"
            error = client.get(f"{emu.endpoint_url}/status/{bad_id}").json()["error"]
            assert "input.items: List should have at least 1 item" in error
        assert emu.stats()["routes"]["job-stream"]["max_request_bytes"] <= wire.DEFAULT_BODY_BUDGET
