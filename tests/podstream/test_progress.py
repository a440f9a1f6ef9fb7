"""podstream.progress: outcomes, and the two displays fed the events a transfer makes."""

from __future__ import annotations

import io
import json
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
    human_bytes,
    outcome_dict,
)


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
        "job j1 COMPLETED; 1 file(s) saved (1.5 MB); 1 item(s) failed; 1 stream problem(s): gap"
    )
    data = json.loads(json.dumps(outcome_dict(result)))
    assert data["files"][0]["path"] == str(tmp_path / "00000-a.mp4")
    assert data["failures"][0]["code"] == "bad_image" and data["ok"] is False
    assert JobOutcome("j2", status="COMPLETED").ok
    assert not JobOutcome("j3", status="FAILED", error="oom").ok


@pytest.mark.parametrize(
    ("n", "text"), [(0, "0 B"), (999, "999 B"), (1000, "1.0 KB"), (2_500_000, "2.5 MB"), (3e12, "3000.0 GB")]
)
def test_human_bytes(n: float, text: str) -> None:
    assert human_bytes(n) == text


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
        f"saved {tmp_path / '00000-a.mp4'} (1.5 MB video/mp4)",
        "failed item 1 (b): bad_image: cannot decode",  # the same words as the live bars
        "problem gap: 1 envelope(s) never arrived: 7",
    ]
    assert display.last_seq == 12
