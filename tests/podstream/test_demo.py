"""`podstream demo` end to end: real emulator, real SDK worker processes (tiny pipelines), real relay.

One run of the demo (small batches) as a subprocess with a terminal on stdin, as `make demo` has, so it keeps
running: its page link must be printed whole on one line at a narrow width, carry no API key, and give a
read-only token of its job; every saved file must match its manifest's sha256 and decode (PyAV for videos,
Pillow for images); then Ctrl-C must stop every process the demo started. One more run without a terminal
(CI) must end by itself. Plus the pieces that need no stack. (client_js/test/demo_link.test.js opens the
printed link in Chromium.)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
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
    assert demo.page_url("http://h", "j", "c-1_x") == "http://h/#job=j&code=c-1_x"


def test_the_key_file_is_for_its_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "out" / "api-key"
    demo.write_key(path, "psk_secret")
    assert path.read_text() == "psk_secret\n"
    assert path.stat().st_mode & 0o777 == 0o600


def test_printed_urls_are_never_wrapped() -> None:
    from rich.console import Console

    buffer = io.StringIO()
    console = Console(file=buffer, width=30, force_terminal=False)
    url = "http://127.0.0.1:45678/#job=" + "j" * 60 + "&code=" + "c" * 22
    demo._print_url(console, url)
    assert buffer.getvalue() == url + "\n"


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


#: The page link as the demo prints it: the relay, the job id and a link code, nothing else.
LINK = re.compile(r"^(http://127\.0\.0\.1:\d+)/#job=([A-Za-z0-9_-]+)&code=([A-Za-z0-9_-]+)$", re.M)


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo-out"
    size = 64
    argv = [
        sys.executable, "-m", "podstream", "demo", "--out", str(out), "--videos", "3", "--images", "2",
        "--frames", "8", "--size", str(size), "--json",
    ]  # fmt: skip
    env = {**os.environ, "COLUMNS": "40"}  # narrower than the link: it must still come out whole
    terminal, tty = pty.openpty()  # stdin is a terminal, as under `make demo`: the stack keeps running
    process = subprocess.Popen(
        argv,
        stdin=tty,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    os.close(tty)
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
        assert "psk_" not in log, "the API key is never printed"
        links = LINK.findall(log)
        assert len(links) == 2, (
            f"the link, whole on a line of its own, after the submits and at the end:\n{log}"
        )
        # the same job; a fresh code at the end, since the first may have been used (each works once)
        assert links[0][:2] == links[1][:2] and links[0][2] != links[1][2]
        relay, job, link_code = links[0]
        assert len(f"{relay}/#job={job}&code={link_code}") < 100
        family = psutil.Process(process.pid).children(recursive=True)
        assert len(family) >= 3, "emulator, worker(s) and relay are running"

        # the link's code is a read-only credential for its job, once
        redeemed = httpx.post(f"{relay}/v1/links/{link_code}", timeout=10)
        assert redeemed.status_code == 200, redeemed.text
        token = {"authorization": f"Bearer {redeemed.json()['token']}"}
        assert httpx.get(f"{relay}/v1/jobs/{job}", headers=token, timeout=10).json()["status"] == "COMPLETED"
        assert httpx.get(f"{relay}/v1/jobs", headers=token, timeout=10).status_code == 403
        assert httpx.post(f"{relay}/v1/links/{link_code}", timeout=10).status_code == 404, "one-time"
        assert httpx.post(f"{relay}/v1/links/{links[1][2]}", timeout=10).status_code == 200  # the second

        key_file = out / "api-key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        exported = re.search(r"^to submit .*: export PODSTREAM_API_KEY=\$\(cat (\S+)\)$", log, re.M)
        assert exported, log
        assert Path(exported.group(1)).resolve() == key_file.resolve()
        auth = {"authorization": f"Bearer {key_file.read_text().strip()}"}
        assert httpx.get(f"{relay}/v1/jobs", timeout=10).status_code == 401
        job_dirs = sorted(
            p for p in out.iterdir() if p.is_dir() and p.name not in ("logs", "samples", "relay-data")
        )
        assert len(job_dirs) == 2
        assert job in [p.name for p in job_dirs]
        kinds = set()
        for job_dir in job_dirs:
            manifest = httpx.get(f"{relay}/v1/jobs/{job_dir.name}", headers=auth, timeout=10).json()
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
        assert process.poll() is None, "still running: it waits for Ctrl-C"
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
            assert code == 130, "".join(stderr[-20:])  # stopped by Ctrl-C: 130, as docs/cli.md says
            assert "podstream demo: interrupted" in "".join(stderr[-5:])
        os.close(terminal)
    summary = json.loads(process.stdout.read() if process.stdout else "{}")
    assert summary["ok"] is True
    assert summary["page_url"] == f"{relay}/#job={job}&code={link_code}"
    assert 0 < summary["largest_stream_post_bytes"] <= demo.STREAM_CHUNK_CAP
    assert [j["files"] for j in summary["jobs"]] == [3, 2]
    assert all(j["first_file_s"] <= j["total_s"] for j in summary["jobs"])


@pytest.mark.slow
def test_demo_without_a_terminal_ends_by_itself(tmp_path: Path) -> None:
    # CI: stdin is not a terminal, so the demo ends after its summary and stops every process it started.
    argv = [
        sys.executable, "-m", "podstream", "demo", "--out", str(tmp_path / "out"), "--videos", "0",
        "--images", "1", "--size", "32", "--steps", "1",
    ]  # fmt: skip
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    assert process.returncode == 0, output
    assert "every file saved and verified" in output
    assert "press Ctrl-C" not in output and "keeps running" not in output
    # into a pipe nothing is wrapped at 80 columns: each line is whole, however long
    saved = [line for line in output.splitlines() if line.startswith("saved ")]
    assert saved and all(line.rstrip().endswith("image/png") for line in saved), output
    [largest] = [line for line in output.splitlines() if line.startswith("largest RunPod message:")]
    assert len(largest) > 80 and "largest /stream answer" in largest
    assert LINK.search(output), output
    assert "psk_" not in output
