"""What went wrong, in one vocabulary: a code per cause and the sentence that says it.

The CLI, the JS client (client_js/src/errors.js, `PROBLEMS`) and the demo page say the same thing for the
same cause: a refused key is `key_rejected` everywhere, whether the relay said so over HTTP (401) or by
closing a websocket (4501). A code names the cause, not the channel that reported it. The sentences are
templates with `{field}` slots, filled by `sentence`; tests/podstream/test_problems.py checks that the JS
module holds exactly these codes and templates.

These are what a user reads. The codes of the protocol itself (an `error` record's `missing_item`, an
`err` frame's `forbidden`, docs/protocol.md) stay as they are on the wire: the JSON output keeps them
per item, and the sentences here summarise them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from enum import StrEnum
from typing import Final, Literal


class Code(StrEnum):
    """One cause a user is told about."""

    RELAY_UNREACHABLE = "relay_unreachable"
    RUNPOD_UNREACHABLE = "runpod_unreachable"
    CREDENTIAL_MISSING = "credential_missing"
    KEY_REJECTED = "key_rejected"
    TOKEN_REJECTED = "token_rejected"
    TOKEN_EXPIRED = "token_expired"
    NOT_ALLOWED = "not_allowed"
    ORIGIN_NOT_ALLOWED = "origin_not_allowed"
    JOB_NOT_FOUND = "job_not_found"
    JOB_CANCELLED = "job_cancelled"
    JOB_ENDED_EARLY = "job_ended_early"
    ITEMS_NEVER_SENT = "items_never_sent"
    STREAM_DRAINED = "stream_drained"


#: The sentence of each code; `{name}` slots are filled by `sentence`. Lower case, no final full stop: a
#: sentence is often the end of a longer line (`podstream watch: ...`, `job list: ...`).
SENTENCES: Final[dict[Code, str]] = {
    Code.RELAY_UNREACHABLE: "cannot reach the relay at {url}",
    Code.RUNPOD_UNREACHABLE: "cannot reach RunPod at {url}",
    Code.CREDENTIAL_MISSING: "{server} needs an API key or a token, and none was given",
    Code.KEY_REJECTED: "{server} rejected the API key",
    Code.TOKEN_REJECTED: "the relay rejected the token: it is not one this relay issued",
    Code.TOKEN_EXPIRED: "the token has expired: get a new one",
    Code.NOT_ALLOWED: "the relay does not allow this: {reason}",
    Code.ORIGIN_NOT_ALLOWED: "the relay does not take requests from this page's origin",
    Code.JOB_NOT_FOUND: "the relay does not know the job {job}",
    Code.JOB_CANCELLED: "the job was cancelled: {files} arrived",
    Code.JOB_ENDED_EARLY: "the job ended {status}: {files} arrived",
    Code.ITEMS_NEVER_SENT: "never sent: {items}",
    Code.STREAM_DRAINED: (
        "RunPod's /stream hands each item out once, and this job's were already taken by another reader "
        "(a relay following the job, or an earlier pull): follow the job there instead, "
        "podstream watch {job} --relay URL"
    ),
}


def sentence(code: Code, **fields: object) -> str:
    """The sentence of `code` with its slots filled (`sentence(Code.KEY_REJECTED, server="the relay")`)."""
    return SENTENCES[code].format(**fields)


def item_ranges(items: Iterable[int]) -> str:
    """Items as runs: `item 4`, `items 0-29`, `items 0-2, 5, 7-9` (sorted, each once)."""
    ordered = sorted(set(items))
    runs: list[list[int]] = []
    for item in ordered:
        if runs and item == runs[-1][-1] + 1:
            runs[-1].append(item)
        else:
            runs.append([item])
    text = ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)
    return f"{'item' if len(ordered) == 1 else 'items'} {text}"


def job_ended(status: str, arrived: int, expected: int | None, never: Iterable[int]) -> str:
    """What a job that ended before all its files were made comes to, in one sentence: `the job was
    cancelled: 0 of 30 files arrived; never sent: items 0-29`. `expected` None: out of what arrived and
    what was reported missing, if anything was (else `3 files arrived`). `never`: the items the worker never sent (the relay's `missing_item`)."""
    never = sorted(set(never))
    total = expected if expected is not None else (arrived + len(never) if never else None)
    files = (
        f"{arrived} of {total} files" if total is not None else f"{arrived} file{'' if arrived == 1 else 's'}"
    )
    if status == "CANCELLED":
        line = sentence(Code.JOB_CANCELLED, files=files)
    else:
        line = sentence(Code.JOB_ENDED_EARLY, status=status, files=files)
    if never:
        line += "; " + sentence(Code.ITEMS_NEVER_SENT, items=item_ranges(never))
    return line


#: What a request carried: an API key, a subscriber token, or nothing.
Credential = Literal["key", "token"] | None


def refusal(
    status: int, body: object, *, credential: Credential, server: str = "the relay", job: str | None = None
) -> tuple[Code, str] | None:
    """The cause and sentence of an HTTP refusal (401, 403, 404 for a job), from the relay's error body
    `{"error": {"code", "message"}}` (`body` parsed or as text) and what the request carried. A token the
    relay calls an unknown API key (it is not shaped like a token) is still a rejected token: the sentence
    names what the user gave. None for any other answer."""
    code, message = _error_of(body)
    if status == 401:
        if credential is None:
            return Code.CREDENTIAL_MISSING, sentence(Code.CREDENTIAL_MISSING, server=server)
        if code == "token_expired":
            return Code.TOKEN_EXPIRED, sentence(Code.TOKEN_EXPIRED)
        if credential == "token" or code in ("invalid_token", "wrong_audience"):
            return Code.TOKEN_REJECTED, sentence(Code.TOKEN_REJECTED)
        return Code.KEY_REJECTED, sentence(Code.KEY_REJECTED, server=server)
    if status == 403:
        if code == "origin_not_allowed":
            return Code.ORIGIN_NOT_ALLOWED, sentence(Code.ORIGIN_NOT_ALLOWED)
        return Code.NOT_ALLOWED, sentence(Code.NOT_ALLOWED, reason=message or f"HTTP {status}")
    if status == 404 and job is not None and code in ("", "not_found"):
        return Code.JOB_NOT_FOUND, sentence(Code.JOB_NOT_FOUND, job=job)
    return None


def closed(close_code: int, *, credential: Credential) -> tuple[Code, str] | None:
    """The cause and sentence of a websocket the relay closed for good because of who asked (4501, 4003
    without a way to renew, 4504); None for other codes (docs/protocol.md lists them)."""
    if close_code == 4501:
        if credential is None:
            return Code.CREDENTIAL_MISSING, sentence(Code.CREDENTIAL_MISSING, server="the relay")
        if credential == "key":
            return Code.KEY_REJECTED, sentence(Code.KEY_REJECTED, server="the relay")
        return Code.TOKEN_REJECTED, sentence(Code.TOKEN_REJECTED)
    if close_code == 4003:
        return Code.TOKEN_EXPIRED, sentence(Code.TOKEN_EXPIRED)
    if close_code == 4504:
        return Code.ORIGIN_NOT_ALLOWED, sentence(Code.ORIGIN_NOT_ALLOWED)
    return None


def _error_of(body: object) -> tuple[str, str]:
    """`(code, message)` of the relay's error body, parsed or as JSON text; empty strings when absent."""
    if isinstance(body, str | bytes):
        try:
            body = json.loads(body)
        except ValueError:
            return "", ""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return str(error.get("code") or ""), str(error.get("message") or "")
    if isinstance(error, str):  # an older shape: {"error": "code", "message": "..."}
        message = body.get("message") if isinstance(body, dict) else None
        return error, str(message or "")
    return "", ""
