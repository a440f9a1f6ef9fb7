"""podstream/stream_split.py: a `/stream` answer split into its entries however its bytes are chunked."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

import pytest

from podstream import wire
from podstream.stream_split import StreamSplitter, entry_output, parse_entry


def split(body: bytes, sizes: Callable[[], int]) -> tuple[list[bytes], object]:
    splitter = StreamSplitter()
    texts: list[bytes] = []
    at = 0
    while at < len(body):
        step = sizes()
        texts += splitter.feed(body[at : at + step])
        at += step
    return texts, splitter.close()


def random_json(rng: random.Random, depth: int = 0) -> object:
    tricky = ['a"b', "x\\", '\\"', '"', '\\\\"', "]", "[", "{", "}", ",", "é", "\u2028", "stream", "data"]
    roll = rng.random()
    if depth > 3 or roll < 0.3:
        return rng.choice([*tricky, 1, 2.5, None, True])
    if roll < 0.6:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(tricky): random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))}


def test_the_splitter_finds_every_entry_whatever_the_chunking() -> None:
    rng = random.Random(7)
    for _ in range(800):
        keys = ["id", "status", "stream", rng.choice(["x", "stream ", 'q"'])]
        rng.shuffle(keys)
        doc: dict[str, object] = {}
        for key in keys:
            if key == "stream":
                doc[key] = [
                    {"output": random_json(rng)} if rng.random() < 0.8 else random_json(rng)
                    for _ in range(rng.randint(0, 4))
                ]
            else:
                doc[key] = random_json(rng)
        for body in (json.dumps(doc).encode(), json.dumps(doc, ensure_ascii=False, indent=1).encode()):
            texts, rest = split(body, lambda: rng.randint(1, 9))
            assert isinstance(rest, dict) and rest.get("stream") in ([], doc["stream"])
            entries = [json.loads(t) for t in texts] if texts else rest["stream"]
            assert {**rest, "stream": entries} == doc


def test_the_splitter_reads_the_status_before_the_entries_and_rejects_bad_bodies() -> None:
    splitter = StreamSplitter()
    assert splitter.feed(b' {"id": "j", "status": "IN_PROGRESS", "stream": [{"output": 1}') == []
    assert splitter.status == "IN_PROGRESS"
    assert splitter.feed(b", 2]}") == [b'{"output": 1}', b" 2"]
    assert splitter.close() == {"id": "j", "status": "IN_PROGRESS", "stream": []}
    for body in (b"<html>", b'{"stream": [{"output": 1}', b'{"status": "X"'):
        with pytest.raises(ValueError):
            split(body, lambda: 3)
    assert split(b"[1]", lambda: 2) == ([], [1])  # not an object: the caller rejects it
    assert parse_entry(b'{"output": {"a": 1}}') == ({"a": 1}, False)
    assert parse_entry(b'"junk"') == ("junk", True)
    assert parse_entry(b"{bad")[1]


def test_entry_output_hands_a_part_s_base64_over_as_a_view_of_the_entry_text() -> None:
    part = next(wire.Envelopes("j").parts(0, b"\x00\xff" * 3000, mime="video/mp4", id="a"))
    for text in (json.dumps({"output": part}).encode(), json.dumps({"output": part}, indent=1).encode()):
        output = entry_output(text)
        assert isinstance(output, dict) and isinstance(output["data"], memoryview)
        assert output["data"].obj is text  # not copied out of it
        assert {**output, "data": bytes(output["data"]).decode("ascii")} == part
    # Anything else keeps the string: a result's data (joined as text), a part with non-ASCII around it
    # (the view is only taken when `isascii` says the whole entry is), a part whose data has escapes.
    result = {"v": 1, "type": "result", "data": '{"a": 1}'.replace('"', "'")}
    odd = {**part, "id": "é"}
    for output, text in (
        (result, json.dumps({"output": result}).encode()),
        (odd, json.dumps({"output": odd}, ensure_ascii=False).encode()),
        (part, json.dumps({"output": part}).encode().replace(b"/", b"\\/")),  # JSON's escape for "/"
    ):
        assert entry_output(text) == output, text
    # Non-ASCII bytes in the data: what `json.loads` makes of it (a string the Assembler's base64 check
    # rejects), or not JSON at all.
    text = json.dumps({"output": part}).encode().replace(b'"data": "', b'"data": "\xc3\xa9', 1)
    output = entry_output(text)
    assert isinstance(output, dict) and output["data"] == "é" + part["data"]
    assert isinstance(entry_output(text.replace(b"\xc3\xa9", b"\xff", 1)), str)
