"""relay.logs: one JSON object per line with the job id; the text format shows it too."""

from __future__ import annotations

import json
import logging

from relay.logs import JsonFormatter, TextFormatter, configure, job


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    entry = logging.makeLogRecord(
        {"name": "podstream.relay", "levelname": "INFO", "msg": message, "args": args}
    )
    entry.__dict__.update(extra)
    return entry


def test_json_lines_carry_the_job() -> None:
    line = JsonFormatter().format(record("deleted job %s", "j-1", **job("j-1", reason="quota")))
    entry = json.loads(line)
    assert entry["message"] == "deleted job j-1" and entry["job"] == "j-1" and entry["reason"] == "quota"
    assert entry["level"] == "info" and entry["logger"] == "podstream.relay" and entry["ts"].endswith("Z")
    assert "\n" not in line


def test_exceptions_stay_on_one_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        entry = record("failed")
        entry.exc_info = sys.exc_info()
    parsed = json.loads(JsonFormatter().format(entry))
    assert "ValueError: boom" in parsed["exc"]


def test_text_lines_name_the_job() -> None:
    assert TextFormatter().format(record("hello", **job("j-2"))).endswith("hello job=j-2")


def test_uvicorn_colour_messages_leave_no_ansi_codes() -> None:
    # uvicorn passes its message again with colours as `extra={"color_message": ...}`
    entry = record("Uvicorn running on %s", "http://x", color_message="Uvicorn running on \x1b[1m%s\x1b[0m")
    for formatter in (TextFormatter(), JsonFormatter()):
        line = formatter.format(entry)
        assert "\x1b" not in line and "color_message" not in line and "http://x" in line


def test_httpx_request_lines_only_at_debug() -> None:
    """One `HTTP Request: GET .../stream` line per long poll drowned everything else at info."""
    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    handlers, level, httpx_level = root.handlers[:], root.level, httpx_logger.level
    try:
        configure("info")
        assert not httpx_logger.isEnabledFor(logging.INFO) and httpx_logger.isEnabledFor(logging.WARNING)
        configure("debug")
        assert httpx_logger.isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        httpx_logger.setLevel(httpx_level)
