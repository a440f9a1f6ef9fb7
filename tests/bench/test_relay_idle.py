"""bench.relay_idle as a real process against a real relay: what it reports, and when the fd limit binds."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def idle(tmp_path: Path, subscribers: int, *prefix: str) -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
    out = tmp_path / "idle.json"
    command = [
        *prefix,
        sys.executable,
        "-m",
        "bench.relay_idle",
        "--subscribers",
        str(subscribers),
        "--json",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert out.exists(), done.stdout + done.stderr
    figures: dict = json.loads(out.read_text())  # type: ignore[type-arg]
    return done, figures


def test_holds_every_subscriber_and_reports_rss_fds_and_limits(tmp_path: Path) -> None:
    done, figures = idle(tmp_path, 40)
    assert done.returncode == 0, done.stderr
    assert figures["subscribers_held"] == 40 and not figures["errors"]
    assert [r["subscribers"] for r in figures["rows"]] == [0, 10, 20, 30, 40]
    # one descriptor per subscriber in the relay: the count grows by the subscribers added
    assert figures["rows"][-1]["fds"] - figures["rows"][0]["fds"] >= 40
    assert figures["rss_mib"] > figures["idle_rss_mib"] > 0 and figures["per_subscriber_kib"] > 0
    soft, hard = figures["relay_nofile"]
    assert soft == hard  # raised to the hard limit, inherited by the relay
    assert figures["fd_limit_binds"] is False
    assert "held 40 of 40 idle authenticated subscribers" in done.stdout


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="needs util-linux prlimit")
def test_says_so_when_the_fd_limit_binds(tmp_path: Path) -> None:
    done, figures = idle(tmp_path, 300, "prlimit", "--nofile=200:200")
    assert done.returncode == 0, done.stderr  # a binding limit is a finding, not a failure
    assert figures["relay_nofile"] == [200, 200]
    assert figures["subscribers_held"] < 300 and figures["fd_limit_binds"] is True
    assert "the file-descriptor limit binds" in done.stdout
