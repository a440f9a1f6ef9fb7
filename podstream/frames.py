"""The relay's websocket frames (docs/protocol.md, section 2): one msgpack map per binary frame, its type in `t`.

Builders of every frame, and checks of both directions, shared by the relay (relay/api/ws.py sends server
frames and reads client frames, relay/hub.py builds `chunk` frames) and the Python client
(podstream/watcher.py). client_js/src/frames.js is the JS twin; a test holds the two to the same frame types,
required fields and close codes. Pure functions, no I/O, no msgpack: callers pack and unpack.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final


class CloseCode(IntEnum):
    """Close codes the relay uses. 4000-4499: reconnect (with backoff); 4500-4999: do not."""

    GOING_AWAY = 4000
    SLOW_CONSUMER = 4001
    PING_TIMEOUT = 4002
    TOKEN_EXPIRED = 4003
    TOO_MANY_CONNECTIONS = 4004
    TRY_AGAIN = 4005  # a passing storage error on the relay (EMFILE, ENOSPC, EIO): reconnect and resume
    MALFORMED_FRAME = 4500
    UNAUTHORIZED = 4501
    FRAME_TOO_LARGE = 4502
    TOO_MANY_SUBSCRIPTIONS = 4503
    ORIGIN_NOT_ALLOWED = 4504


def is_terminal_close(code: int) -> bool:
    """Whether a websocket close code means "do not reconnect"."""
    return 4500 <= code <= 4999


class FrameError(ValueError):
    """A frame that does not follow docs/protocol.md (the message says what is wrong, in one line)."""


#: What each server frame must carry besides `t`, and of what kind ("int" is an integer, "number" any
#: number, "bin" bytes). Fields not named here are optional or free (an `ev` carries its record's fields).
SERVER_FIELDS: Final[dict[str, dict[str, str]]] = {
    "welcome": {"ping": "number"},
    "subscribed": {"job": "string", "head": "int", "recovered": "boolean"},
    "ev": {"job": "string", "seq": "int", "k": "string"},
    "chunk": {"job": "string", "seq": "int", "item": "int", "off": "int", "data": "bin", "last": "boolean"},
    "ping": {"n": "number"},
    "err": {"code": "string"},
    "bye": {"code": "int"},
}
#: Optional server fields that have a kind when present.
SERVER_OPTIONAL: Final[dict[str, dict[str, str]]] = {"subscribed": {"expected_items": "int"}}

_KINDS: Final[dict[str, tuple[type, ...]]] = {
    "string": (str,),
    "int": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "bin": (bytes, bytearray, memoryview),
}


def _is(value: object, kind: str) -> bool:
    if kind in ("int", "number") and isinstance(value, bool):
        return False  # a bool is an int to Python, not to the protocol
    return isinstance(value, _KINDS[kind])


def check_server(frame: object) -> dict[str, Any]:
    """A server frame as a client receives it, checked: a map with a known `t` and its required fields.
    Raises `FrameError` otherwise. (A record kind `k` this client does not know is not an error: the
    protocol asks consumers to step past it.)"""
    if not isinstance(frame, dict) or not isinstance(frame.get("t"), str):
        raise FrameError(f"a frame is a map with a string 't', not {str(frame)[:100]}")
    kind = frame["t"]
    fields = SERVER_FIELDS.get(kind)
    if fields is None:
        raise FrameError(f"unknown frame type {kind!r}")
    for name, of in fields.items():
        if not _is(frame.get(name), of):
            raise FrameError(f"a {kind!r} frame needs {name!r} ({of})")
    for name, of in SERVER_OPTIONAL.get(kind, {}).items():
        if frame.get(name) is not None and not _is(frame[name], of):
            raise FrameError(f"a {kind!r} frame's {name!r} is {of} when present")
    return frame


# ------------------------------------------------------------------------------------------- server frames


def welcome(version: int, server: str, ping_s: float) -> dict[str, Any]:
    return {"t": "welcome", "v": version, "server": server, "ping": ping_s}


def subscribed(
    job: str, head: int, status: str, recovered: bool, expected_items: int | None
) -> dict[str, Any]:
    """`status` is "" before the relay's first poll; `expected_items` None when the input did not say."""
    return {
        "t": "subscribed", "job": job, "head": head, "status": status, "recovered": recovered,
        "expected_items": expected_items,
    }  # fmt: skip


def ev(job: str, record: dict[str, Any]) -> dict[str, Any]:
    """A journal record (its public fields: `seq`, `k`, ...) for a subscriber of `job`."""
    return {"t": "ev", "job": job, **record}


def chunk(head: dict[str, Any], off: int, data: bytes, last: bool) -> dict[str, Any]:
    """Bytes of an item's file; `head` holds the item record's `job`, `seq` and `item`."""
    return {"t": "chunk", **head, "off": off, "data": data, "last": last}


def ping(n: int) -> dict[str, Any]:
    return {"t": "ping", "n": n}


def err(code: str, message: str, job: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"t": "err", "code": code, "message": message}
    if job is not None:
        frame["job"] = job
    return frame


def bye(code: int, reason: str) -> dict[str, Any]:
    return {"t": "bye", "code": code, "reason": reason}


# ------------------------------------------------------------------------------------------- client frames


@dataclass(frozen=True)
class Auth:
    """A token or an API key; sent first, or again to refresh (no reply)."""

    token: str


@dataclass(frozen=True)
class Sub:
    job: str
    #: The last seq the client has (0: from the start).
    after: int = 0
    #: Whether the relay sends each item's bytes as `chunk` frames after its record.
    inline: bool = True


@dataclass(frozen=True)
class Unsub:
    job: str


@dataclass(frozen=True)
class Pong:
    n: int = 0


ClientFrame = Auth | Sub | Unsub | Pong


def auth(token: str) -> dict[str, Any]:
    return {"t": "auth", "token": token}


def sub(job: str, after: int = 0, inline: bool = True) -> dict[str, Any]:
    return {"t": "sub", "job": job, "from": after, "inline": inline}


def unsub(job: str) -> dict[str, Any]:
    return {"t": "unsub", "job": job}


def pong(n: int) -> dict[str, Any]:
    return {"t": "pong", "n": n}


def frame_type(frame: object) -> str:
    """The `t` of an unpacked frame; `FrameError` when it is not a map with a string `t`."""
    if not isinstance(frame, dict) or not isinstance(frame.get("t"), str):
        raise FrameError("a frame is a msgpack map with a string 't'")
    kind: str = frame["t"]
    return kind


def parse_client(frame: object) -> ClientFrame:
    """A client frame as the relay receives it, checked; `FrameError` says what is wrong."""
    kind = frame_type(frame)
    assert isinstance(frame, dict)
    if kind == "auth":
        token = frame.get("token")
        if not isinstance(token, str):
            raise FrameError("auth needs a string 'token'")
        return Auth(token)
    if kind == "sub":
        job, after, inline = frame.get("job"), frame.get("from", 0), frame.get("inline", True)
        if not isinstance(job, str) or type(after) is not int or not isinstance(inline, bool):
            raise FrameError("sub needs 'job' (string), 'from' (integer) and 'inline' (boolean)")
        if after < 0:
            raise FrameError("'from' must be >= 0")
        return Sub(job, after, inline)
    if kind == "unsub":
        job = frame.get("job")
        if not isinstance(job, str):
            raise FrameError("unsub needs a string 'job'")
        return Unsub(job)
    if kind == "pong":
        n = frame.get("n", 0)
        if type(n) is not int:
            raise FrameError("pong needs an integer 'n'")
        return Pong(n)
    raise FrameError(f"unknown frame type {kind!r}")
