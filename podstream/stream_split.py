"""A `/stream` answer taken apart as it arrives, without I/O: shared by the relay's poller and `podstream pull`.

RunPod's `GET /stream/{job}` answers `{"status": ..., "stream": [{"output": envelope}, ...], ...}`, and one
answer can be large (everything buffered at RunPod: 100 MB of base64 parts). `StreamSplitter` finds where
each entry of the `stream` list ends as the bytes arrive (brackets, commas and strings only), so a consumer
can parse, decode, hash and write the first entries while the rest is still being received, and never
holds or JSON-decodes the answer whole. `entry_output` parses one entry, slicing a part's base64 `data`
out of the text instead of running it through the JSON string decoder; `parse_entry` is the plain parse.

No I/O and no server dependencies here (the relay re-exports these from `relay.ingest.runpod`).
"""

from __future__ import annotations

import json
import re
from typing import Final

from podstream import wire


def parse_entry(text: bytes) -> tuple[object, bool]:
    """One entry of a `/stream` list (a JSON text from `StreamSplitter`): (its `output`, False), or (the
    entry itself, True) when it has none, for the Assembler to reject; an entry that is not JSON comes
    back as a string saying so."""
    try:
        entry = json.loads(text)
    except ValueError:
        return f"an entry of RunPod's /stream answer is not JSON: {text[:80]!r}", True
    if isinstance(entry, dict) and "output" in entry:
        return entry["output"], False
    return entry, True


_TOKEN: Final = re.compile(rb'[\[\]{}",]')
_STREAM_KEY: Final = re.compile(rb'"stream"\s*:\s*\Z')
_QUOTE: Final = 0x22
_BACKSLASH: Final = 0x5C
_COMMA: Final = 0x2C
_LIST: Final = 0x5B
_OPEN: Final = frozenset(b"{[")
_CLOSE: Final = frozenset(b"}]")


class StreamSplitter:
    """Splits a `/stream` answer body into the JSON texts of its `stream` entries as the bytes arrive.

    Only the structure is scanned: brackets, commas and strings (a string's end is found with `find`, so a
    long base64 string costs one memchr per chunk). Everything but the entries (`status`, `id`, ...) is the
    *skeleton*: the answer with an empty `stream` list, parsed by `close`. A body that is not a JSON object
    is kept whole for `close` to parse (and reject). Each entry is handed out as its own text, to be parsed
    (and, if it is not JSON, rejected) on its own; a body that ends early or is malformed outside its
    entries fails `close`.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._backslashes = 0  # backslashes that ended the last chunk inside a string
        self._object: bool | None = None  # is the body a JSON object? (None: no byte seen yet)
        self._skeleton = bytearray()
        self._in_stream = False  # inside the top-level "stream" list
        self._entry: list[bytes | memoryview] = []  # the current entry's bytes from earlier chunks
        self._entries_here = 0  # entries of the current "stream" list so far
        #: The answer's status as soon as it is known (RunPod sends it before the list), else "".
        self.status = ""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The texts of the entries that `chunk` completed."""
        if self._object is None:
            start = chunk.lstrip()[:1]
            if start:
                self._object = start == b"{"
        if not self._object:
            self._skeleton += chunk
            return []
        view = memoryview(chunk)
        out: list[bytes] = []
        pos = mark = 0  # scan position; start of the bytes not yet given to the skeleton or an entry
        while True:
            if self._in_string:
                end = chunk.find(b'"', pos)
                if end < 0:
                    run = len(chunk) - len(chunk.rstrip(b"\\"))
                    self._backslashes = run + self._backslashes if run == len(chunk) - pos else run
                    break
                k = end - 1
                while k >= pos and chunk[k] == _BACKSLASH:
                    k -= 1
                run = end - 1 - k + (self._backslashes if k < pos and pos == 0 else 0)
                self._backslashes = 0
                pos = end + 1
                if run % 2 == 0:  # not an escaped quote
                    self._in_string = False
                continue
            match = _TOKEN.search(chunk, pos)
            if match is None:
                break
            i = match.start()
            c = chunk[i]
            pos = i + 1
            if c == _QUOTE:
                self._in_string = True
                self._backslashes = 0
            elif c in _OPEN:
                self._depth += 1
                if self._depth == 2 and c == _LIST and self._is_stream_key(chunk[max(mark, i - 64) : i]):
                    self._skeleton += view[mark:pos]
                    mark = pos
                    self._in_stream = True
                    self._entries_here = 0
                    self.status = self._early_status()
            elif c in _CLOSE:
                if self._in_stream and self._depth == 2:
                    text = self._take(view[mark:i])
                    if self._entries_here or text.strip():
                        out.append(text)
                    mark = i  # the closing bracket goes to the skeleton
                    self._in_stream = False
                self._depth -= 1
            elif c == _COMMA and self._in_stream and self._depth == 2:
                out.append(self._take(view[mark:i]))
                self._entries_here += 1
                mark = pos
        if self._in_stream:
            if mark < len(chunk):
                self._entry.append(view[mark:] if mark else chunk)
        else:
            self._skeleton += view[mark:]
        return out

    def _take(self, last: memoryview) -> bytes:
        if not self._entry:
            return bytes(last)
        self._entry.append(last)
        text = b"".join(self._entry)
        self._entry.clear()
        return text

    def _is_stream_key(self, before: bytes) -> bool:
        return _STREAM_KEY.search(bytes(self._skeleton[-64:]) + before) is not None

    def _early_status(self) -> str:
        try:
            head = json.loads(bytes(self._skeleton) + b"]}")
        except ValueError:
            return ""
        status = head.get("status") if isinstance(head, dict) else None
        return status if isinstance(status, str) else ""

    def close(self) -> object:
        """The answer without the entries handed out (raises ValueError if it is not whole JSON)."""
        if self._object and (self._in_stream or self._in_string or self._depth):
            raise ValueError("the answer ended early")
        return json.loads(bytes(self._skeleton))


def entry_output(text: bytes) -> object:
    """The `output` of one `/stream` entry. A part's base64 `data` (nearly all of its bytes) is sliced out
    of the text as is when it is a plain JSON string (no escapes, ASCII) and the only `"data"` in it: the
    JSON decoder then only sees the rest. Anything else goes through `parse_entry` whole. Either way the
    result is what `json.loads` makes of the entry, except that a control character in such `data` (which
    `json.loads` refuses) is left for the Assembler's base64 check to reject, as it does any non-base64,
    and that a part's `data` comes as a memoryview of its ASCII bytes in `text` (`wire.BASE64_TEXT`): not
    copied into a string only to be base64-decoded, which was a tenth of the relay's ingest CPU."""
    at = text.find(b'"data"')
    if at > 0 and text[at - 1] != 0x5C:
        start = at + 6
        while start < len(text) and text[start] in b" \t\r\n:":
            start += 1
        end = text.find(b'"', start + 1) if text[start : start + 1] == b'"' else -1
        # A string with no backslash holds no quote, so another `"data"` can only come after it: the
        # base64 is scanned for the quote and the backslash, not a third time for a second key.
        if (
            end > 0
            and text.find(b"\\", start, end) < 0
            and text.count(b":", at + 6, start) == 1
            and text.find(b'"data"', end + 1) < 0
        ):
            try:
                entry = json.loads(text[:start] + b'""' + text[end + 1 :])
            except ValueError:
                entry = None
            output = entry.get("output") if isinstance(entry, dict) else None
            if (
                isinstance(output, dict)
                and output.get("data") == ""
                and not any(isinstance(v, dict | list) for v in output.values())
            ):
                # `isascii` scans without copying; only a part's `data` may be bytes (a result's is its
                # JSON text, joined as a string).
                if output.get("type") == wire.PART and text.isascii():
                    output["data"] = memoryview(text)[start + 1 : end]
                    return output
                try:
                    output["data"] = text[start + 1 : end].decode("ascii")
                except ValueError:
                    pass
                else:
                    return output
    return parse_entry(text)[0]
