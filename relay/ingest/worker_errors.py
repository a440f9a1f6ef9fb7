"""What consumers see of a worker's error: one line, without the SDK's traceback.

Used wherever the relay journals an error RunPod reports for a job (the poller, for a FAILED job; gap
recovery, for a resend job that failed); the whole error stays in the relay's log."""

from __future__ import annotations

import contextlib
import json
import re

#: A consumer's error message is at most this long (the whole error is in the relay's log).
MAX_ERROR_CHARS = 300


def one_line_error(error: object) -> str:
    """What consumers see of a worker's error: its message on one line, without the SDK's traceback.

    The RunPod SDK reports a generator handler's exception as `"handler: <message> \ntraceback: <...>"`,
    and a plain handler's as JSON `{"error_type", "error_message", "error_traceback", ...}`."""
    text = error if isinstance(error, str) else json.dumps(error)
    details: object = None
    with contextlib.suppress(ValueError):
        details = json.loads(text)
    if isinstance(details, dict) and isinstance(details.get("error_message"), str):
        kind = str(details.get("error_type") or "")
        name = kind.removeprefix("<class '").removesuffix("'>").rsplit(".", 1)[-1]
        text = f"{name}: {details['error_message']}" if name else details["error_message"]
    text = re.split(r"\s*\btraceback:|\nTraceback \(most recent call last\)", text, maxsplit=1)[0]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = (lines[0] if lines else "the job failed").removeprefix("handler: ").strip()
    return line if len(line) <= MAX_ERROR_CHARS else line[: MAX_ERROR_CHARS - 3] + "..."
