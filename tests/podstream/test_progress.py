"""podstream.progress: outcomes, and the two displays fed the events a transfer makes."""

from __future__ import annotations

import io
import json
import re
import subprocess
from pathlib import Path

import pytest
from rich.console import Console

from podstream.progress import (
    ItemFailure,
    JobOutcome,
    LineProgress,
    RichProgress,
    SavedFile,
    StreamProblem,
    display_path,
    failure_text,
    human_bytes,
    outcome_dict,
    readable,
)

ROOT = Path(__file__).resolve().parents[2]


def outcome(tmp_path: Path) -> JobOutcome:
    return JobOutcome(
        "j1",
        status="COMPLETED",
        files=[SavedFile(0, "a", "video/mp4", 1_500_000, "0" * 64, tmp_path / "00000-a.mp4")],
        failures=[ItemFailure(1, "b", "bad_image", "cannot decode")],
        problems=[StreamProblem("gap", "1 envelope(s) never arrived: 7")],
        expected_items=3,
    )


def test_outcome_summary_and_json(tmp_path: Path) -> None:
    result = outcome(tmp_path)
    assert not result.ok and result.bytes == 1_500_000
    assert result.summary() == (
        "job j1 COMPLETED; 1 file(s) saved (1.4 MB); 1 item(s) failed; 1 stream problem(s): gap"
    )
    data = json.loads(json.dumps(outcome_dict(result)))
    assert data["files"][0]["path"] == str(tmp_path / "00000-a.mp4")
    assert data["failures"][0]["code"] == "bad_image" and data["ok"] is False
    assert JobOutcome("j2", status="COMPLETED").ok
    assert not JobOutcome("j3", status="FAILED", error="oom").ok


SIZES = [0, 1, 999, 1023, 1024, 1280, 1536, 2560, 37_920, 1_000_000, 1_048_575, 1_048_576, 1_500_000,
         10_000_000, 123_456_789, 5 * 2**30]  # fmt: skip


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KB"), (37_920, "37.0 KB"), (1280, "1.3 KB"),
     (1_048_576, "1.0 MB"), (2_500_000, "2.4 MB"), (5 * 2**30, "5120.0 MB")],
)  # fmt: skip
def test_human_bytes(n: float, text: str) -> None:
    assert human_bytes(n) == text


def test_human_bytes_says_what_the_demo_page_says() -> None:
    """The page's own formatBytes (client_js/demo/progress.js), run by node, against human_bytes."""
    source = (ROOT / "client_js" / "demo" / "progress.js").read_text()
    match = re.search(r"^export function formatBytes\(bytes\) \{.*?^\}", source, re.MULTILINE | re.DOTALL)
    assert match, "formatBytes is gone from progress.js: keep the CLI and the page on one format"
    function = match.group(0).removeprefix("export ")
    script = f"{function}\nconsole.log(JSON.stringify({json.dumps(SIZES)}.map(formatBytes)));"
    node = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=60)
    assert node.returncode == 0, node.stderr
    assert json.loads(node.stdout) == [human_bytes(n) for n in SIZES]


def test_messages_carry_no_python_reprs(tmp_path: Path) -> None:
    text = "cannot identify image file <_io.BytesIO object at 0x7f3a2c1d5e40>"
    assert readable(text) == "cannot identify image file a BytesIO"
    failure = ItemFailure(2, "cat", "bad_image", text)
    assert failure_text(failure) == "item 2 (cat): bad_image: cannot identify image file a BytesIO"
    assert failure_text(ItemFailure(1, "", "missing_item", "")) == "item 1: missing_item"  # no stray space
    lost = JobOutcome("j", status="COMPLETED", error="handler: <foo.Bar object at 0xABCDEF>")
    assert "0x" not in lost.summary() and "error: handler: a Bar" in lost.summary()


def test_rich_progress_off_a_terminal_keeps_lines_apart() -> None:
    """In a log or a pipe the bars are not redrawn: each job's last line is a line of its own."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=100, force_terminal=False)
    for title in ("image -> video", "text -> image"):
        with RichProgress(total=2, console=console, title=title) as display:
            display.status("COMPLETED")
            display.item_failed(ItemFailure(0, "a", "bad_input", "items[0].seed: [Errno 2] odd"))
    lines = buffer.getvalue().splitlines()
    assert [line.split()[0] for line in lines] == ["failed", "image", "failed", "text"]
    assert lines[0] == "failed item 0 (a): bad_input: items[0].seed: [Errno 2] odd"  # brackets are text


def test_display_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert display_path(tmp_path / "out" / "x.mp4") == "out/x.mp4"
    assert display_path(Path("/elsewhere/x.mp4")) == "/elsewhere/x.mp4"


def test_rich_progress_draws_bars_and_lines(tmp_path: Path) -> None:
    buffer = io.StringIO()
    console = Console(file=buffer, width=120, force_terminal=False)
    result = outcome(tmp_path)
    with RichProgress(total=3, console=console, title="videos", started=0.0) as display:
        display.status("IN_PROGRESS")
        display.item_progress(0, 1, 2)
        display.item_started(0, "a", "video/mp4", 1_500_000)
        display.item_bytes(0, 700_000, 1_500_000)
        display.item_saved(result.files[0])
        display.item_failed(result.failures[0])
        display.problem(result.problems[0])
        display.reconnecting(2, 1.5, "connection closed (4001 slow consumer)")
        display.finished(result)
    text = buffer.getvalue()
    assert "saved" in text and "00000-a.mp4" in text
    assert "failed item 1 (b): bad_image: cannot decode" in text
    assert "problem gap" in text and "retrying in 1.5s (attempt 2)" in text
    assert "videos" in text and "2/3" in text
    assert display.outcome is result and display.first_file_after is not None


def test_line_progress(tmp_path: Path) -> None:
    buffer = io.StringIO()
    display = LineProgress(buffer)
    result = outcome(tmp_path)
    display.item_saved(result.files[0])
    display.item_failed(result.failures[0])
    display.problem(result.problems[0])
    display.position(12)
    assert buffer.getvalue().splitlines() == [
        f"saved {tmp_path / '00000-a.mp4'} (1.4 MB video/mp4)",
        "failed item 1 (b): bad_image: cannot decode",  # the same words as the live bars
        "problem gap: 1 envelope(s) never arrived: 7",
    ]
    assert display.last_seq == 12
