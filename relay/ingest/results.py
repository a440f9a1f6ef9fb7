"""A wrapped handler's result on the relay: journaled as one `result` record, served with media URLs.

The worker sends the value with each file as `{"$file": item}` (docs/protocol.md, "The result"). The
journal keeps it as sent, so websocket clients map items to their own Blob URLs; `GET /v1/jobs/{id}`
serves it with each reference replaced by that item's media URL (signed), `null` for an item it lacks.
A value too large for one journal record is not stored: a job-level `result_too_large` error says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from podstream import wire
from relay.storage.job import ERROR, MAX_RECORD_BYTES, RESULT, JobStore

#: The largest result (as compact JSON) the journal keeps. Half a record: the ingest log's record of the
#: result's last page holds that page (under 1 MB) and this record together, within `MAX_RECORD_BYTES`.
MAX_RESULT_RECORD_BYTES: Final = MAX_RECORD_BYTES // 2


def result_entry(event: wire.ResultReceived) -> tuple[str, dict[str, Any]]:
    """The journal entry for a complete result: `result {value}`, or an error when it cannot be stored."""
    size = len(json.dumps(event.value, separators=(",", ":")).encode())
    if size > MAX_RESULT_RECORD_BYTES:
        message = (
            f"the job's result is {size} bytes of JSON, over the {MAX_RESULT_RECORD_BYTES} the relay keeps"
        )
        return ERROR, {"item": None, "code": "result_too_large", "message": message}
    return RESULT, {"value": event.value}


def with_urls(store: JobStore, urls: Mapping[int, str]) -> Any:
    """The job's result with `{"$file": i}` replaced by `urls[i]` (None when missing); None without a result."""
    record = store.result
    if record is None:
        return None
    return wire.substitute(record.get("value"), lambda item: urls.get(item))
