"""`podstream demo` end to end: real emulator, real SDK worker processes (tiny pipelines), real relay.

One run of the demo (small batches) as a subprocess, kept running so the relay's manifests can be read:
every saved file must match its manifest's sha256 and decode (PyAV for videos, Pillow for images); then
Ctrl-C must stop every process the demo started. Plus the pieces that need no stack.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import httpx
import psutil
import pytest
from PIL import Image

from podstream import demo


def test_sample_images_are_distinct_pngs() -> None:
    images = [demo.sample_image(k, 64) for k in range(4)]
    assert len(set(images)) == 4
    decoded = Image.open(io.BytesIO(images[0]))
    assert decoded.format == "PNG" and decoded.size == (64, 64)


def test_page_url() -> None:
    assert demo.page_url("http://127.0.0.1:1", "a/b") == "http://127.0.0.1:1/#job=a%2Fb"
    assert demo.page_url("http://h", "j", "t.1") == "http://h/#job=j&token=t.1"
    assert demo.page_url("http://h", "j", None, "k&1") == "http://h/#job=j&key=k%261"


def test_child_stop_ends_its_whole_session(tmp_path: Path) -> None:
    # A child that starts a grandchild and ignores SIGTERM: stop() must still leave nothing behind.
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    child = demo.Child("stubborn", [sys.executable, "-c", code], tmp_path / "child.log")
    child.start()
    assert child.pid is not None
    deadline = time.monotonic() + 20
    while "ready" not in child.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    family = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
    assert len(family) == 2
    child.stop(timeout=0.5)
    _, alive = psutil.wait_procs(family, timeout=5)
    assert not alive
    assert child.exited() is not None


def _decode(path: Path, mime: str, size: int) -> None:
    if mime.startswith("video/"):
        with av.open(str(path)) as container:
            frames = list(container.decode(video=0))
        assert len(frames) == 8
        assert (frames[0].width, frames[0].height) == (size, size)
    else:
        with Image.open(path) as image:
            image.load()
            assert image.size == (size, size)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    size = 64
    argv = [
        sys.executable, "-m", "podstream", "demo", "--out", str(out), "--videos", "3", "--images", "2",
        "--frames", "8", "--size", str(size), "--keep-running", "--json",
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "160"}
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )
    stderr: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            stderr.append(line)
            if "press Ctrl-C" in line:
                ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        assert ready.wait(240), "the demo did not finish its batch:\n" + "".join(stderr[-40:])
        log = "".join(stderr)
        assert "Traceback" not in log
        relay = re.search(r"relay (http://127\.0\.0\.1:\d+)", log)
        assert relay, log
        family = psutil.Process(process.pid).children(recursive=True)
        assert len(family) >= 3, "emulator, worker(s) and relay are running"

        job_dirs = sorted(
            p for p in out.iterdir() if p.is_dir() and p.name not in ("logs", "samples", "relay-data")
        )
        assert len(job_dirs) == 2
        # the relay has auth: the page link the demo printed carries its API key in the fragment
        key = re.search(r"[#&]key=([A-Za-z0-9_-]+)", log)
        assert key, log
        auth = {"authorization": f"Bearer {key.group(1)}"}
        assert httpx.get(f"{relay.group(1)}/v1/jobs", timeout=10).status_code == 401
        kinds = set()
        for job_dir in job_dirs:
            manifest = httpx.get(f"{relay.group(1)}/v1/jobs/{job_dir.name}", headers=auth, timeout=10).json()
            assert manifest["status"] == "COMPLETED"
            items = manifest["items"]
            assert len(items) in (3, 2)
            files = sorted(job_dir.iterdir())
            assert len(files) == len(items), "exactly the manifest's files, no temp files left"
            for entry in items:
                path = next(f for f in files if f.name.startswith(f"{entry['item']:05d}-"))
                assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
                assert path.stat().st_size == entry["size"]
                _decode(path, entry["mime"], size)
                kinds.add(entry["mime"])
        assert kinds == {"video/mp4", "image/png"}
    finally:
        if process.poll() is None:
            family = psutil.Process(process.pid).children(recursive=True)
            process.send_signal(signal.SIGINT)  # what Ctrl-C does
            try:
                code = process.wait(60)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
            reader.join(5)
            _, alive = psutil.wait_procs(family, timeout=10)
            assert not alive, f"left running: {alive}"
            assert code == 0, "".join(stderr[-20:])
    summary = json.loads(process.stdout.read() if process.stdout else "{}")
    assert summary["ok"] is True
    assert 0 < summary["largest_stream_post_bytes"] <= demo.STREAM_CHUNK_CAP
    assert [j["files"] for j in summary["jobs"]] == [3, 2]
    assert all(j["first_file_s"] <= j["total_s"] for j in summary["jobs"])
