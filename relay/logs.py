"""Structured logs: one JSON object per line (`PODSTREAM_LOG_FORMAT=json`), or readable text.

Log calls about one job pass it as `extra={"job": id}`; both formats show it (`job=ID` in text), so every
line about a job can be found with one filter. Secrets are never logged: keys, tokens and signatures stay
out of messages, and uvicorn's access log (which would show query strings) is off.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Final

#: `LogRecord` attributes that are not `extra` fields.
_STANDARD: Final = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


#: Extras that are not fields: uvicorn's `color_message` is its message with ANSI colour codes in it.
_NOT_FIELDS: Final = frozenset({"color_message"})


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _STANDARD and k not in _NOT_FIELDS and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_extras(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        if extras:
            text += " " + " ".join(f"{k}={v}" for k, v in sorted(extras.items()))
        return text


#: Libraries whose INFO lines are one per request (httpx: `HTTP Request: GET .../stream/ID "200 OK"`, for
#: every long poll of every job): shown from WARNING up, unless the level asked for is debug.
_CHATTY: Final = ("httpx",)


def configure(level: str = "info", fmt: str = "text") -> None:
    """Log to stderr in `fmt` ("text" or "json"), uvicorn's loggers included."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if level.lower() == "debug" else logging.WARNING)


def job(job_id: str, **fields: Any) -> dict[str, Any]:
    """`extra=` of a log call about one job."""
    return {"job": job_id, **fields}
