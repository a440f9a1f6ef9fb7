"""podstream.frames: the websocket frames' builders and checks, and their agreement with the JS client's
(client_js/src/frames.js): the same close codes, frame types and required fields."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgpack
import pytest

from podstream import frames

JS = (Path(__file__).resolve().parents[2] / "client_js" / "src" / "frames.js").read_text()


def js_close_codes() -> dict[str, int]:
    block = re.search(r"export const CloseCode = Object\.freeze\(\{(.*?)\}\);", JS, re.DOTALL)
    assert block is not None, "client_js/src/frames.js no longer declares CloseCode"
    return {name: int(code) for name, code in re.findall(r"^\s*([A-Z_]+): (\d+),", block.group(1), re.M)}


def js_server_fields() -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """What decodeFrame requires of each frame type, and what it checks only when present."""
    body = JS[JS.index("export function decodeFrame") :]
    required: dict[str, dict[str, str]] = {}
    optional: dict[str, dict[str, str]] = {}
    for kind, case in re.findall(r'case "(\w+)":(.*?)break;', body, re.DOTALL):
        required[kind], optional[kind] = {}, {}
        for line in case.splitlines():
            need = re.search(r'need\(map, "(\w+)", "(\w+)"\)', line)
            if need is not None:
                (optional if "!= null" in line else required)[kind][need.group(1)] = need.group(2)
    return required, {kind: fields for kind, fields in optional.items() if fields}


def test_the_close_codes_are_the_js_clients() -> None:
    assert js_close_codes() == {code.name: code.value for code in frames.CloseCode}
    assert [frames.is_terminal_close(c) for c in (4000, 4499, 4500, 4999, 1000)] == [
        False,
        False,
        True,
        True,
        False,
    ]


def test_the_server_frames_and_their_fields_are_the_js_clients() -> None:
    required, optional = js_server_fields()
    assert required == frames.SERVER_FIELDS
    assert optional == frames.SERVER_OPTIONAL


def test_the_client_frame_types_are_the_js_clients() -> None:
    typedefs = re.search(r"@typedef \{(\w+ \| )+\w+\} ClientFrame", JS)
    assert typedefs is not None
    names = re.findall(r"(\w+)Frame", typedefs.group(0).split("}")[0])
    js_types = {re.search(rf'\{{\{{t: "(\w+)"[^}}]*\}}\}} {name}Frame', JS).group(1) for name in names}  # type: ignore[union-attr]
    assert js_types == {"auth", "sub", "unsub", "pong"}
    for kind, built in [("auth", frames.auth("t")), ("sub", frames.sub("j")), ("unsub", frames.unsub("j")),
                        ("pong", frames.pong(1))]:  # fmt: skip
        assert built["t"] == kind and frames.parse_client(built) is not None


def roundtrip(frame: dict[str, Any]) -> Any:
    return msgpack.unpackb(msgpack.packb(frame, use_bin_type=True), raw=False)


def test_every_server_frame_built_passes_its_check_after_msgpack() -> None:
    built = [
        frames.welcome(1, "podstream-relay", 20.0),
        frames.subscribed("j", 0, "", True, None),
        frames.subscribed("j", 3, "IN_PROGRESS", False, 40),
        frames.ev("j", {"seq": 1, "k": "status", "status": "IN_QUEUE"}),
        frames.chunk({"job": "j", "seq": 2, "item": 0}, 0, b"\x00" * 10, True),
        frames.ping(1),
        frames.err("not_found", "this relay does not know the job", "j"),
        frames.err("malformed", "no job"),
        frames.bye(4000, "server going away"),
    ]
    assert {frame["t"] for frame in built} == set(frames.SERVER_FIELDS)
    for frame in built:
        assert frames.check_server(roundtrip(frame)) == roundtrip(frame)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ([1, 2], "a map with a string 't'"),
        ({"t": "hello"}, "unknown frame type 'hello'"),
        ({"t": "ev", "job": "j", "seq": "1", "k": "item"}, "'seq' (int)"),
        ({"t": "subscribed", "job": "j", "head": True, "recovered": True}, "'head' (int)"),
        (
            {"t": "chunk", "job": "j", "seq": 1, "item": 0, "off": 0, "data": "text", "last": True},
            "'data' (bin)",
        ),
        (
            {"t": "subscribed", "job": "j", "head": 0, "recovered": True, "expected_items": 1.5},
            "'expected_items'",
        ),
    ],
)
def test_a_server_frame_off_the_protocol_is_named(frame: object, message: str) -> None:
    with pytest.raises(frames.FrameError, match=re.escape(message)):
        frames.check_server(frame)


def test_client_frames_parse_with_their_defaults() -> None:
    assert frames.parse_client({"t": "auth", "token": "abc"}) == frames.Auth("abc")
    assert frames.parse_client({"t": "sub", "job": "j"}) == frames.Sub("j", 0, True)
    assert frames.parse_client(frames.sub("j", 7, inline=False)) == frames.Sub("j", 7, False)
    assert frames.parse_client({"t": "unsub", "job": "j"}) == frames.Unsub("j")
    assert frames.parse_client({"t": "pong"}) == frames.Pong(0)


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("text", "a msgpack map with a string 't'"),
        ({"t": 1}, "a msgpack map with a string 't'"),
        ({"t": "auth"}, "auth needs a string 'token'"),
        ({"t": "sub", "job": "j", "from": "1"}, "sub needs 'job' (string), 'from' (integer)"),
        ({"t": "sub", "job": "j", "from": True}, "sub needs 'job' (string), 'from' (integer)"),
        ({"t": "sub", "job": "j", "from": -1}, "'from' must be >= 0"),
        ({"t": "sub", "job": "j", "inline": "yes"}, "'inline' (boolean)"),
        ({"t": "unsub"}, "unsub needs a string 'job'"),
        ({"t": "pong", "n": "1"}, "pong needs an integer 'n'"),
        ({"t": "subscribe", "job": "j"}, "unknown frame type 'subscribe'"),
    ],
)
def test_a_client_frame_off_the_protocol_is_named(frame: object, message: str) -> None:
    with pytest.raises(frames.FrameError, match=re.escape(message)):
        frames.parse_client(frame)
