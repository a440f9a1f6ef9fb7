"""The worker -> RunPod -> consumer envelope: a sans-I/O core.

Nothing here touches a socket or a file. The worker side turns files into numbered JSON-able envelopes
(`Envelopes`), each guaranteed to fit RunPod's one-stream-chunk cap once the SDK wraps it as
`{"output": envelope}`. The consumer side (`Assembler`) is fed envelopes in whatever order, multiplicity and
completeness the network produced, and returns `Event` objects: items completed (sha256 verified), progress,
per-item errors, refs, the manifest, and problems. It never raises on bad input and never holds a whole
item in memory when given a `SinkFactory` that writes to disk.

Envelope shapes (version `v` = 1; see docs/protocol.md):

    {"v":1,"job":J,"run":R,"seq":n,"type":"part","item":i,"id":ID,"part":k,"parts":K,"mime":M,
     "size":S,"sha256":H,"data":BASE64}
    {"v":1,"job":J,"run":R,"seq":n,"type":"progress","item":i,"step":s,"steps":T}
    {"v":1,"job":J,"run":R,"seq":n,"type":"ref","item":i,"id":ID,"mime":M,"size":S,"sha256":H,"url":U}
    {"v":1,"job":J,"run":R,"seq":n,"type":"error","item":i,"id":ID,"code":C,"message":MSG}
    {"v":1,"job":J,"run":R,"seq":n,"type":"result","page":p,"pages":P,"size":S,"sha256":H,"data":TEXT}
    {"v":1,"job":J,"run":R,"seq":n,"type":"manifest","page":p,"pages":P,"items":[...],"errors":E,
     "last_seq":L}

`seq` is dense from 1 across one run of a job. Part k of an item of `size` bytes in `parts` parts covers
bytes [k*L, min(size,(k+1)*L)) where L = ceil(size/parts): a receiver places any part without having seen
the others. The manifest always comes last; when it would not fit one chunk it is split into pages.

A `result` (optional, at most one per run, after every file and before the manifest) carries the JSON value a
wrapped handler returned (`worker.wrap`), each file in it replaced by `{"$file": item}`: its `data` fields,
joined in page order, are that value's JSON text (`size` bytes, `sha256`). `substitute` puts files back.

Problems form one small hierarchy, all `Problem` events (never exceptions):

    Problem
    +-- Malformed         the envelope itself is unusable (missing/extra/mistyped field, bad index, ...)
    |   +-- Unsupported   unknown `v` or `type`
    +-- Duplicate         a seq seen before (ignored, counted)
    +-- Corrupt           bad base64, wrong part length, sha256 or size mismatch of a completed item
    +-- Inconsistent      an item's parts disagree (parts/size/sha256/mime/id changed between parts)
    +-- Gap               seqs that never arrived (reported by `finish()`)
    +-- Incomplete        an item whose parts never all arrived (reported by `finish()`)
    +-- ManifestMismatch  the manifest disagrees with what arrived
    +-- MissingManifest   the stream ended without a (complete) manifest
    +-- BadResult         the result's pages disagree, or joined they are not the JSON their sha256 names
    +-- IncompleteResult  some pages of the result never arrived (reported by `finish()`)
"""

from __future__ import annotations

import binascii
import hashlib
import json
import math
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import pybase64  # SIMD base64: ~30x binascii's decode, the largest cost of ingest

VERSION: Final = 1
PART: Final = "part"
PROGRESS: Final = "progress"
REF: Final = "ref"
ERROR: Final = "error"
MANIFEST: Final = "manifest"
RESULT: Final = "result"
TYPES: Final = frozenset({PART, PROGRESS, REF, ERROR, RESULT, MANIFEST})

#: RunPod's cap on one streamed chunk is 1 MB; this is the budget for the *whole* POST body
#: `{"output": envelope}` as the SDK sends it.
DEFAULT_BODY_BUDGET: Final = 1_000_000
#: RunPod's cap on a `/run` request body (the job input travels in it): what staging inputs keeps under.
RUN_BODY_CAP: Final = 10_000_000
#: RunPod job statuses after which nothing more happens to a job (its /status and /stream say so). The one
#: list in the project: the relay, the CLI, the emulator and the JS client (client_js/src) agree on it.
TERMINAL_STATUSES: Final = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
#: Raw bytes per part by default: base64 makes 699,052 characters of it, far under the budget.
DEFAULT_PART_BYTES: Final = 512 * 1024
#: Hard limits that keep a consumer's memory bounded whatever a sender claims.
MAX_ITEMS: Final = 1_000_000
MAX_PARTS: Final = 1 << 20
MAX_FILE_BYTES: Final = 1 << 40
MAX_ID_CHARS: Final = 128
MAX_MIME_CHARS: Final = 100
MAX_MESSAGE_CHARS: Final = 2000
MAX_CODE_CHARS: Final = 64
MAX_URL_CHARS: Final = 4096
#: The largest result JSON text a consumer accepts (it is held in memory until its last page arrives).
MAX_RESULT_BYTES: Final = 64 * 1024 * 1024
#: The key of a file reference inside a result, and the escape for a user's own one-key `$...` object.
FILE_KEY: Final = "$file"
LITERAL_KEY: Final = "$literal"
# Room left in every budget for numbers that grow (seq, item, part) and JSON punctuation.
_SLACK: Final = 256


def body_size(envelope: Mapping[str, Any]) -> int:
    """Bytes of the POST body the runpod SDK sends for one `yield envelope`.

    Measured with `ensure_ascii=True` and default separators, which is never smaller than the SDK's own
    encoding (escaped non-ASCII is longer than UTF-8), so a body within budget here is within it there.
    """
    return len(json.dumps({"output": envelope}).encode("ascii"))


def sha256_hex(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def part_length(size: int, parts: int) -> int:
    """The length of every part but the last of an item of `size` bytes split in `parts` parts."""
    return max(1, math.ceil(size / parts)) if size else 0


def part_count(size: int, part_bytes: int) -> int:
    return max(1, math.ceil(size / part_bytes))


def split(data: bytes, part_bytes: int = DEFAULT_PART_BYTES) -> Iterator[memoryview]:
    """Split `data` into `part_count(len(data), part_bytes)` near-equal parts (views, no copies).

    Parts are balanced (all of length `part_length`, the last one shorter) rather than all `part_bytes`
    long so that a receiver can place part k at offset k*L knowing only `size` and `parts`.
    """
    if part_bytes < 1:
        raise ValueError("part_bytes must be >= 1")
    view = memoryview(data)
    parts = part_count(len(data), part_bytes)
    length = part_length(len(data), parts)
    if not data:
        yield view
        return
    for k in range(parts):
        yield view[k * length : (k + 1) * length]


def max_part_bytes(budget: int = DEFAULT_BODY_BUDGET, *, id: str = "", mime: str = "") -> int:
    """The largest raw part that still fits `budget` once base64-encoded inside a part envelope."""
    template = {
        "v": VERSION, "job": "x" * MAX_ID_CHARS, "run": "x" * 16, "seq": 10**15, "type": PART,
        "item": MAX_ITEMS, "id": id, "part": MAX_PARTS, "parts": MAX_PARTS, "mime": mime,
        "size": MAX_FILE_BYTES, "sha256": "0" * 64, "data": "",
    }  # fmt: skip
    room = budget - body_size(template) - _SLACK
    if room < 4:
        raise ValueError(f"a body budget of {budget} bytes leaves no room for data")
    return room // 4 * 3


class EnvelopeTooLarge(ValueError):
    """An envelope would exceed its body budget (a bug in the caller's limits, never silent)."""


@dataclass(frozen=True)
class ManifestItem:
    item: int
    id: str
    status: str  # "ok" (streamed as parts), "ref" (uploaded, see url) or "error"
    mime: str = ""
    size: int = 0
    sha256: str = ""
    parts: int = 0
    url: str = ""
    seed: int | None = None  # the seed the file was generated with (drawn at random when the input had none)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"item": self.item, "id": self.id, "status": self.status}
        if self.status != "error":
            out.update(mime=self.mime, size=self.size, sha256=self.sha256, parts=self.parts)
        if self.url:
            out["url"] = self.url
        if self.seed is not None:
            out["seed"] = self.seed
        return out


class Envelopes:
    """Builds the envelopes of one run of one job, numbering them densely from seq 1.

    Every envelope returned is within `budget` bytes as a RunPod stream POST body; `EnvelopeTooLarge` is
    raised otherwise, before anything is sent.
    """

    def __init__(self, job: str, *, budget: int = DEFAULT_BODY_BUDGET, run: str | None = None) -> None:
        if len(job) > MAX_ID_CHARS:
            raise ValueError(f"job id longer than {MAX_ID_CHARS} characters")
        self.job = job
        self.run = run or secrets.token_hex(8)
        self.budget = budget
        self.seq = 0

    def _next(self, type_: str, **fields: Any) -> dict[str, Any]:
        self.seq += 1
        env: dict[str, Any] = {"v": VERSION, "job": self.job, "run": self.run, "seq": self.seq, "type": type_}
        env.update(fields)
        return env

    def _checked(self, env: dict[str, Any], extra: int = 0) -> dict[str, Any]:
        size = body_size(env) + extra
        if size > self.budget:
            raise EnvelopeTooLarge(f"{env['type']} envelope is {size} bytes, over the {self.budget} budget")
        return env

    def parts(
        self,
        item: int,
        data: bytes,
        *,
        mime: str,
        id: str = "",
        part_bytes: int = DEFAULT_PART_BYTES,
        sha256: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """One `part` envelope per part of `data`; `part_bytes` is lowered to what fits the budget.

        `sha256` is `data`'s digest when the caller has it already (the worker hashes in its encode
        thread, so the event loop that sends the parts does not); otherwise it is computed here."""
        _check_id(id)
        fit = min(part_bytes, max_part_bytes(self.budget, id=id, mime=mime))
        digest = sha256 if sha256 is not None else sha256_hex(data)
        chunks = list(split(data, fit))
        for k, chunk in enumerate(chunks):
            env = self._next(
                PART, item=item, id=id, part=k, parts=len(chunks), mime=mime, size=len(data),
                sha256=digest, data="",
            )  # fmt: skip
            text = pybase64.b64encode_as_string(chunk)
            # Base64 needs no JSON escaping, so the body is the empty-data body plus the text's length:
            # checked without JSON-encoding the part's bytes (the SDK encodes them once, to send them).
            self._checked(env, len(text))
            env["data"] = text
            yield env

    def progress(self, item: int, step: int, steps: int) -> dict[str, Any]:
        return self._checked(self._next(PROGRESS, item=item, step=step, steps=steps))

    def ref(self, item: int, *, url: str, mime: str, size: int, sha256: str, id: str = "") -> dict[str, Any]:
        _check_id(id)
        return self._checked(self._next(REF, item=item, id=id, mime=mime, size=size, sha256=sha256, url=url))

    def error(self, item: int, code: str, message: str, *, id: str = "") -> dict[str, Any]:
        _check_id(id)
        return self._checked(
            self._next(
                ERROR, item=item, id=id, code=code[:MAX_CODE_CHARS], message=message[:MAX_MESSAGE_CHARS]
            )
        )

    def result(self, value: Any, *, page_chars: int | None = None) -> list[dict[str, Any]]:
        """The `result` envelopes of a JSON-able `value` (files already replaced by `file_ref`), paged.

        Each page is a slice of the value's compact ASCII JSON text. Inside the envelope that slice is
        escaped once more, which at most doubles it (`"` -> `\\"`), so a page holds half the room left.
        """
        text = json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
        raw = text.encode("ascii")
        if len(raw) > MAX_RESULT_BYTES:
            raise EnvelopeTooLarge(f"the result is {len(raw)} bytes of JSON, over {MAX_RESULT_BYTES}")
        room = self.budget - _SLACK - body_size(
            {"v": VERSION, "job": self.job, "run": self.run, "seq": 10**15, "type": RESULT,
             "page": MAX_PARTS, "pages": MAX_PARTS, "size": MAX_RESULT_BYTES, "sha256": "0" * 64, "data": ""}
        )  # fmt: skip
        chars = min(page_chars or room // 2, room // 2)
        if chars < 1:
            raise ValueError(f"a body budget of {self.budget} bytes leaves no room for a result page")
        slices = [text[i : i + chars] for i in range(0, len(text), chars)] or [""]
        digest = sha256_hex(raw)
        return [
            self._checked(
                self._next(RESULT, page=p, pages=len(slices), size=len(raw), sha256=digest, data=piece)
            )
            for p, piece in enumerate(slices)
        ]

    def manifest(self, items: Iterable[ManifestItem]) -> list[dict[str, Any]]:
        """The manifest, paged so that every page fits the budget; always the last envelopes of a run."""
        entries = [m.to_dict() for m in items]
        errors = sum(1 for m in entries if m["status"] == "error")
        pages: list[list[dict[str, Any]]] = [[]]
        room = self.budget - _SLACK - body_size(
            {"v": VERSION, "job": self.job, "run": self.run, "seq": 10**15, "type": MANIFEST,
             "page": MAX_PARTS, "pages": MAX_PARTS, "items": [], "errors": MAX_ITEMS, "last_seq": 10**15}
        )  # fmt: skip
        used = 0
        for entry in entries:
            cost = len(json.dumps(entry)) + 2
            if pages[-1] and used + cost > room:
                pages.append([])
                used = 0
            pages[-1].append(entry)
            used += cost
        last_seq = self.seq + len(pages)
        return [
            self._checked(
                self._next(MANIFEST, page=p, pages=len(pages), items=page, errors=errors, last_seq=last_seq)
            )
            for p, page in enumerate(pages)
        ]


def _check_id(id: str) -> None:
    if len(id) > MAX_ID_CHARS:
        raise ValueError(f"item id longer than {MAX_ID_CHARS} characters")


# --------------------------------------------------------------------------------------------- events


@dataclass(frozen=True)
class Event:
    seq: int | None


@dataclass(frozen=True)
class ItemComplete(Event):
    """Every part of an item arrived and its size and sha256 match. `result` is what the sink returned."""

    item: int
    id: str
    mime: str
    size: int
    sha256: str
    result: Any = field(repr=False, default=None)


@dataclass(frozen=True)
class Progress(Event):
    item: int
    step: int
    steps: int


@dataclass(frozen=True)
class ItemRef(Event):
    """The item was uploaded out of band; fetch it from `url`."""

    item: int
    id: str
    mime: str
    size: int
    sha256: str
    url: str


@dataclass(frozen=True)
class ItemFailed(Event):
    """The worker reported that this item failed; the batch went on."""

    item: int
    id: str
    code: str
    message: str


@dataclass(frozen=True)
class ManifestReceived(Event):
    """Every page of the manifest has arrived."""

    items: tuple[dict[str, Any], ...]
    errors: int
    last_seq: int


@dataclass(frozen=True)
class ResultReceived(Event):
    """Every page of the job's result arrived and matches its sha256. `value` still holds `{"$file": i}`
    references: `substitute(value, ...)` puts each file back."""

    value: Any = field(repr=False)


@dataclass(frozen=True)
class Restarted(Event):
    """Envelopes of a new run of the job arrived (RunPod `/retry`): state was reset, start over."""

    run: str


@dataclass(frozen=True)
class Problem(Event):
    code: str
    message: str


@dataclass(frozen=True)
class Malformed(Problem):
    pass


@dataclass(frozen=True)
class Unsupported(Malformed):
    pass


@dataclass(frozen=True)
class Duplicate(Problem):
    pass


@dataclass(frozen=True)
class Corrupt(Problem):
    item: int


@dataclass(frozen=True)
class Inconsistent(Problem):
    item: int


@dataclass(frozen=True)
class Gap(Problem):
    missing: tuple[int, ...]


@dataclass(frozen=True)
class Incomplete(Problem):
    item: int
    missing_parts: tuple[int, ...]


@dataclass(frozen=True)
class ManifestMismatch(Problem):
    item: int | None


@dataclass(frozen=True)
class MissingManifest(Problem):
    pass


@dataclass(frozen=True)
class BadResult(Problem):
    pass


@dataclass(frozen=True)
class IncompleteResult(Problem):
    missing_pages: tuple[int, ...]


# ------------------------------------------------------------------------------------ file references


def file_ref(item: int) -> dict[str, int]:
    """What stands for file `item` inside a result."""
    return {FILE_KEY: item}


def is_file_ref(value: object) -> bool:
    return (
        isinstance(value, dict)
        and len(value) == 1
        and type(value.get(FILE_KEY)) is int
        and 0 <= value[FILE_KEY] < MAX_ITEMS
    )


def escape(obj: dict[str, Any]) -> dict[str, Any]:
    """Wrap a user's own one-key object whose key starts with `$` so it is never taken for a reference."""
    if len(obj) == 1 and next(iter(obj)).startswith("$"):
        return {LITERAL_KEY: obj}
    return obj


def substitute(value: Any, replace: Callable[[int], Any]) -> Any:
    """`value` with every `{"$file": i}` replaced by `replace(i)` and every `{"$literal": x}` unwrapped."""
    if is_file_ref(value):
        return replace(value[FILE_KEY])
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(LITERAL_KEY), dict):
            return {k: substitute(v, replace) for k, v in value[LITERAL_KEY].items()}
        return {k: substitute(v, replace) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, replace) for v in value]
    return value


def file_refs(value: Any) -> list[int]:
    """The items a result refers to, in document order."""
    found: list[int] = []
    substitute(value, lambda i: found.append(i))
    return found


# ---------------------------------------------------------------------------------------------- sinks


class ItemSink(Protocol):
    """Where one item's bytes go. Parts may come in any order; each is written once at its offset."""

    def write(self, offset: int, data: bytes) -> None: ...

    def finish(self, sha256: str) -> tuple[bool, Any]:
        """All parts written: verify the digest. Returns (ok, result); on not ok the sink cleans up."""
        ...

    def abort(self) -> None: ...


#: Called when the first part of an item arrives: (item, id, mime, size) -> a sink for its bytes.
SinkFactory = Callable[[int, str, str, int], ItemSink]


class MemorySink:
    """Keeps the item in memory; `result` is the bytes. For small items and tests."""

    def __init__(self, item: int, id: str, mime: str, size: int) -> None:
        self.buffer = bytearray(size)

    def write(self, offset: int, data: bytes) -> None:
        self.buffer[offset : offset + len(data)] = data

    def finish(self, sha256: str) -> tuple[bool, Any]:
        data = bytes(self.buffer)
        return sha256_hex(data) == sha256, data

    def abort(self) -> None:
        self.buffer = bytearray()


# -------------------------------------------------------------------------------------------- assembler


@dataclass
class _ItemState:
    id: str
    mime: str
    size: int
    sha256: str
    parts: int
    sink: ItemSink
    received: dict[int, int] = field(default_factory=dict)  # part -> the seq that carried it


#: A part's `data` is its base64 text: a string, or a memoryview of the text's ASCII bytes. JSON never makes
#: the latter; `stream_split.entry_output` does, pointing into the entry's JSON text, so that the 700 KB of
#: a part are not copied out of it into a string only to be decoded (about a tenth of the relay's ingest CPU).
BASE64_TEXT: Final = (str, memoryview)

_COMMON = {"v": int, "job": str, "run": str, "seq": int, "type": str}
_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    PART: {
        "item": int,
        "id": str,
        "part": int,
        "parts": int,
        "mime": str,
        "size": int,
        "sha256": str,
        "data": BASE64_TEXT,
    },
    PROGRESS: {"item": int, "step": int, "steps": int},
    REF: {"item": int, "id": str, "mime": str, "size": int, "sha256": str, "url": str},
    ERROR: {"item": int, "id": str, "code": str, "message": str},
    MANIFEST: {"page": int, "pages": int, "items": list, "errors": int, "last_seq": int},
    RESULT: {"page": int, "pages": int, "size": int, "sha256": str, "data": str},
}
_HEX = frozenset("0123456789abcdef")


class Assembler:
    """Reassembles one job's stream. Feed it envelopes with `feed`; call `finish` when the stream ends.

    Contract: `feed` never raises for anything a sender can put in an envelope; it returns the events that
    envelope caused (often none, e.g. for a part that does not complete its item). Duplicates are ignored
    and counted. `finish` returns the problems only the end can reveal: gaps, incomplete items, a missing
    manifest, and disagreement between the manifest and what arrived.

    `job` is the job whose envelopes it takes; without one, the job of the first valid envelope: an
    envelope of any other job is `Malformed` (`wrong_job`) either way.
    """

    def __init__(self, job: str | None = None, sink: SinkFactory = MemorySink) -> None:
        self.job = job
        self.run: str | None = None
        self._sink_factory = sink
        self.duplicates = 0
        self.bytes_received = 0
        self._reset()

    def _reset(self) -> None:
        self._floor = 0  # every seq <= floor has been seen
        self._seen: set[int] = set()  # seen seqs above the floor
        self._max_seq = 0
        self._items: dict[int, _ItemState] = {}
        self.completed: dict[int, ItemComplete] = {}
        self.refs: dict[int, ItemRef] = {}
        self.failed: dict[int, ItemFailed] = {}
        self._manifest_pages: dict[int, dict[str, Any]] = {}
        self.manifest: ManifestReceived | None = None
        self._result_pages: dict[int, tuple[int, str]] = {}  # page -> (seq, data)
        self._result_shape: tuple[int, int, str] | None = None  # (pages, size, sha256) of the first page
        self._result_bytes = 0
        self.result: ResultReceived | None = None

    # ---- state queries

    def seen(self, seq: int) -> bool:
        return seq <= self._floor or seq in self._seen

    def missing(self, upto: int | None = None) -> list[int]:
        """Seqs not (yet) received between 1 and `upto` (default: the manifest's last seq, or the highest seen)."""
        end = upto if upto is not None else (self.manifest.last_seq if self.manifest else self._max_seq)
        return [s for s in range(self._floor + 1, end + 1) if s not in self._seen]

    @property
    def done(self) -> bool:
        """The manifest arrived and nothing before it is missing."""
        return self.manifest is not None and not self.missing()

    # ---- feeding

    def feed(self, envelope: object) -> list[Event]:
        problem = self._validate(envelope)
        if problem is not None:
            return [problem]
        assert isinstance(envelope, dict)
        events: list[Event] = []
        self.job = envelope["job"]
        run, seq = envelope["run"], envelope["seq"]
        if self.run is not None and run != self.run:
            self._abort_items()
            self._reset()
            events.append(Restarted(seq, run))
        self.run = run
        if self.seen(seq):
            self.duplicates += 1
            return [*events, Duplicate(seq, "duplicate", f"seq {seq} was already received; ignored")]
        handler = getattr(self, f"_on_{envelope['type']}")
        caused = handler(seq, envelope)
        # A rejected envelope leaves its seq unseen: a genuine copy (a resend) may still fill it, and if
        # none comes, `finish` reports it as a gap.
        if not any(isinstance(e, Problem) for e in caused):
            self._mark(seq)
        return [*events, *caused]

    def _mark(self, seq: int) -> None:
        self._seen.add(seq)
        self._max_seq = max(self._max_seq, seq)
        while self._floor + 1 in self._seen:
            self._floor += 1
            self._seen.discard(self._floor)

    def _unmark(self, seq: int) -> None:
        if seq > self._floor:
            self._seen.discard(seq)
            return
        self._seen.update(range(seq + 1, self._floor + 1))
        self._floor = seq - 1

    def _validate(self, env: object) -> Problem | None:
        seq = env.get("seq") if isinstance(env, dict) and type(env.get("seq")) is int else None
        if not isinstance(env, dict):
            return Malformed(
                None, "malformed", f"an envelope must be a JSON object, got {type(env).__name__}"
            )
        if env.get("v") != VERSION:
            return Unsupported(seq, "unsupported_version", f"unsupported envelope version {env.get('v')!r}")
        type_ = env.get("type")
        if type_ not in _FIELDS:
            return Unsupported(seq, "unknown_type", f"unknown envelope type {type_!r}")
        spec = {**_COMMON, **_FIELDS[type_]}
        for name, kind in spec.items():
            if name not in env:
                return Malformed(seq, "missing_field", f"{type_} envelope without '{name}'")
            value = env[name]
            if isinstance(value, bool) or not isinstance(value, kind):
                return Malformed(seq, "bad_field", f"'{name}' of a {type_} envelope must be {_kind(kind)}")
        extra = set(env) - set(spec)
        if extra:
            return Malformed(
                seq, "extra_field", f"unexpected field(s) in a {type_} envelope: {sorted(extra)}"
            )
        if self.job is not None and env["job"] != self.job:
            return Malformed(seq, "wrong_job", f"envelope of job {env['job']!r} fed to job {self.job!r}")
        if not 1 <= env["seq"] <= 10**15:
            return Malformed(seq, "bad_seq", f"seq {env['seq']} out of range")
        return _check_ranges(seq, type_, env)

    # ---- per type

    def _on_part(self, seq: int, env: dict[str, Any]) -> list[Event]:
        item, k = env["item"], env["part"]
        if item in self.completed or item in self.refs:
            self.duplicates += 1
            return [Duplicate(seq, "duplicate", f"part {k} of item {item}, which is already complete")]
        state = self._items.get(item)
        if state is None:
            sink = self._sink_factory(item, env["id"], env["mime"], env["size"])
            state = _ItemState(env["id"], env["mime"], env["size"], env["sha256"], env["parts"], sink)
            self._items[item] = state
        else:
            for name in ("id", "mime", "size", "sha256", "parts"):
                if getattr(state, name) != env[name]:
                    return [
                        Inconsistent(
                            seq, "inconsistent", f"'{name}' of item {item} changed between its parts", item
                        )
                    ]
        if k in state.received:
            self.duplicates += 1
            return [Duplicate(seq, "duplicate", f"part {k} of item {item} was already received; ignored")]
        try:
            data = pybase64.b64decode(env["data"], validate=True)
        except (binascii.Error, ValueError):
            return [Corrupt(seq, "bad_base64", f"part {k} of item {item} is not valid base64", item)]
        length = part_length(state.size, state.parts)
        expected = min(state.size, (k + 1) * length) - k * length
        if len(data) != expected:
            return [
                Corrupt(
                    seq,
                    "bad_part_size",
                    f"part {k} of item {item} is {len(data)} bytes, expected {expected}",
                    item,
                )
            ]
        state.sink.write(k * length, data)
        state.received[k] = seq
        self.bytes_received += len(data)
        if len(state.received) < state.parts:
            return []
        del self._items[item]
        ok, result = state.sink.finish(state.sha256)
        if not ok:
            # Some part was corrupt but we cannot tell which: reopen the seqs of all of them, so that the
            # item shows as a gap and a resend of those seqs can rebuild it.
            for part_seq in state.received.values():
                if part_seq != seq:
                    self._unmark(part_seq)
            return [Corrupt(seq, "bad_sha256", f"item {item} does not match its sha256", item)]
        done = ItemComplete(seq, item, state.id, state.mime, state.size, state.sha256, result)
        self.completed[item] = done
        return [done]

    def _on_progress(self, seq: int, env: dict[str, Any]) -> list[Event]:
        return [Progress(seq, env["item"], env["step"], env["steps"])]

    def _on_ref(self, seq: int, env: dict[str, Any]) -> list[Event]:
        ref = ItemRef(seq, env["item"], env["id"], env["mime"], env["size"], env["sha256"], env["url"])
        self.refs[ref.item] = ref
        return [ref]

    def _on_error(self, seq: int, env: dict[str, Any]) -> list[Event]:
        failed = ItemFailed(seq, env["item"], env["id"], env["code"], env["message"])
        self.failed[failed.item] = failed
        return [failed]

    def _on_result(self, seq: int, env: dict[str, Any]) -> list[Event]:
        shape = (env["pages"], env["size"], env["sha256"])
        if self.result is not None:
            self.duplicates += 1
            return [Duplicate(seq, "duplicate", "a result page after the result was complete; ignored")]
        if self._result_shape is not None and shape != self._result_shape:
            return [BadResult(seq, "bad_result", "the result's pages disagree on pages, size or sha256")]
        if env["page"] in self._result_pages:
            self.duplicates += 1
            return [Duplicate(seq, "duplicate", f"result page {env['page']} was already received; ignored")]
        if self._result_bytes + len(env["data"]) > env["size"]:
            return [BadResult(seq, "bad_result", "the result's pages are longer than its size")]
        self._result_shape = shape
        self._result_pages[env["page"]] = (seq, env["data"])
        self._result_bytes += len(env["data"])
        if len(self._result_pages) < env["pages"]:
            return []
        pages, self._result_pages, self._result_bytes = self._result_pages, {}, 0
        text = "".join(pages[p][1] for p in range(env["pages"]))
        raw = text.encode("utf-8")
        problem: str | None = None
        value: Any = None
        if len(raw) != env["size"] or sha256_hex(raw) != env["sha256"]:
            problem = "the result does not match its size and sha256"
        else:
            try:
                value = json.loads(text)
            except ValueError:
                problem = "the result is not valid JSON"
        if problem is not None:
            # As for a bad_sha256 item: which page was bad cannot be known, so every page's seq is reopened.
            self._result_shape = None
            for page_seq, _ in pages.values():
                if page_seq != seq:
                    self._unmark(page_seq)
            return [BadResult(seq, "bad_result", problem)]
        self.result = ResultReceived(seq, value)
        return [self.result]

    def _on_manifest(self, seq: int, env: dict[str, Any]) -> list[Event]:
        if env["page"] >= env["pages"]:
            return [Malformed(seq, "bad_field", f"manifest page {env['page']} of {env['pages']}")]
        for entry in env["items"]:
            problem = _check_manifest_entry(seq, entry)
            if problem is not None:
                return [problem]
        self._manifest_pages[env["page"]] = env
        if len(self._manifest_pages) < env["pages"]:
            return []
        pages = [self._manifest_pages[p] for p in sorted(self._manifest_pages)]
        items = tuple(entry for page in pages for entry in page["items"])
        self.manifest = ManifestReceived(seq, items, env["errors"], env["last_seq"])
        return [self.manifest]

    # ---- the end

    def finish(self) -> list[Problem]:
        """Problems only the end of the stream can show. Safe to call more than once."""
        problems: list[Problem] = []
        if self.manifest is None:
            problems.append(
                MissingManifest(None, "missing_manifest", "the stream ended without its manifest")
            )
        missing = self.missing()
        if missing:
            problems.append(
                Gap(
                    None,
                    "gap",
                    f"{len(missing)} envelope(s) never arrived: {_ranges(missing)}",
                    tuple(missing),
                )
            )
        for item, state in sorted(self._items.items()):
            lost = tuple(k for k in range(state.parts) if k not in state.received)
            problems.append(
                Incomplete(
                    None,
                    "incomplete",
                    f"item {item} is missing {len(lost)} of {state.parts} parts",
                    item,
                    lost,
                )
            )
        if self._result_shape is not None and self.result is None:
            pages = self._result_shape[0]
            lost = tuple(p for p in range(pages) if p not in self._result_pages)
            problems.append(
                IncompleteResult(
                    None, "incomplete_result", f"the result is missing {len(lost)} of {pages} pages", lost
                )
            )
        if self.manifest is not None:
            problems.extend(self._check_manifest(self.manifest))
        return problems

    def close(self) -> None:
        """Abandon incomplete items (their sinks clean up)."""
        self._abort_items()

    def _abort_items(self) -> None:
        for state in self._items.values():
            state.sink.abort()
        self._items.clear()

    def _check_manifest(self, manifest: ManifestReceived) -> list[Problem]:
        problems: list[Problem] = []
        listed: set[int] = set()
        for entry in manifest.items:
            item, status = entry["item"], entry["status"]
            listed.add(item)
            got: ItemComplete | ItemRef | None = self.completed.get(item) or self.refs.get(item)
            if status == "error":
                if item not in self.failed:
                    problems.append(
                        ManifestMismatch(
                            None, "manifest_mismatch", f"item {item} failed but its error never arrived", item
                        )
                    )
            elif got is None:
                problems.append(
                    ManifestMismatch(
                        None, "missing_item", f"item {item} is in the manifest but never arrived", item
                    )
                )
            elif (got.size, got.sha256) != (entry.get("size"), entry.get("sha256")):
                problems.append(
                    ManifestMismatch(
                        None, "manifest_mismatch", f"item {item} differs from its manifest entry", item
                    )
                )
        for item in sorted((set(self.completed) | set(self.refs) | set(self.failed)) - listed):
            problems.append(
                ManifestMismatch(
                    None, "unlisted_item", f"item {item} arrived but is not in the manifest", item
                )
            )
        return problems


def drop_partial(assembler: Assembler) -> list[int]:
    """Forget every item `assembler` has half-received: its sink is aborted and the seqs of its parts are
    reopened, so they count as gaps and a resend rebuilds the item from its first part. For a consumer whose
    sinks lost the bytes they had (a relay replica taking over a job another replica was receiving)."""
    dropped = []
    for item, state in list(assembler._items.items()):
        for part_seq in state.received.values():
            assembler._unmark(part_seq)
        state.sink.abort()
        del assembler._items[item]
        dropped.append(item)
    return dropped


def _kind(kind: type | tuple[type, ...]) -> str:
    names = {int: "an integer", str: "a string", list: "a list"}
    if kind == BASE64_TEXT:
        return names[str]  # a memoryview is no JSON type: not worth naming to a sender
    return names.get(kind, str(kind)) if isinstance(kind, type) else "of another type"


def _check_ranges(seq: int | None, type_: str, env: dict[str, Any]) -> Problem | None:
    def bad(message: str) -> Malformed:
        return Malformed(seq, "bad_field", message)

    if type_ not in (MANIFEST, RESULT) and not 0 <= env["item"] < MAX_ITEMS:
        return bad(f"item {env['item']} out of range 0..{MAX_ITEMS - 1}")
    if len(env["job"]) > MAX_ID_CHARS or len(env["run"]) > MAX_ID_CHARS:
        return bad("job or run id too long")
    if "id" in env and len(env["id"]) > MAX_ID_CHARS:
        return bad(f"item id longer than {MAX_ID_CHARS} characters")
    if "mime" in env and len(env["mime"]) > MAX_MIME_CHARS:
        return bad("mime type too long")
    if "sha256" in env and (len(env["sha256"]) != 64 or not set(env["sha256"]) <= _HEX):
        return bad("sha256 must be 64 lowercase hex digits")
    if "size" in env and not 0 <= env["size"] <= MAX_FILE_BYTES:
        return bad(f"size {env['size']} out of range")
    if type_ == PART:
        parts, size = env["parts"], env["size"]
        if not 1 <= parts <= MAX_PARTS or not 0 <= env["part"] < parts:
            return bad(f"part {env['part']} of {parts} out of range")
        length = part_length(size, parts)
        # The layout must be the one `split` makes: no empty parts, none over the one-chunk cap.
        if (size == 0 and parts != 1) or (size and (parts - 1) * length >= size):
            return bad(f"{parts} parts cannot hold an item of {size} bytes")
        if length > DEFAULT_BODY_BUDGET:
            return bad(f"parts of {length} bytes exceed the one-chunk cap")
        if len(env["data"]) > 4 * math.ceil(length / 3) + 4:
            return Corrupt(
                seq, "bad_part_size", f"part {env['part']} of item {env['item']} is too long", env["item"]
            )
    elif type_ == PROGRESS:
        if not 0 <= env["step"] <= env["steps"] <= 1_000_000:
            return bad(f"progress {env['step']}/{env['steps']} out of range")
    elif type_ == ERROR:
        if len(env["code"]) > MAX_CODE_CHARS or len(env["message"]) > MAX_MESSAGE_CHARS:
            return bad("error code or message too long")
    elif type_ == REF:
        if len(env["url"]) > MAX_URL_CHARS or not env["url"].startswith(("http://", "https://")):
            return bad("ref url must be an http(s) URL")
    elif type_ == RESULT:
        if not 1 <= env["pages"] <= MAX_PARTS or not 0 <= env["page"] < env["pages"]:
            return bad(f"result page {env['page']} of {env['pages']} out of range")
        if env["size"] > MAX_RESULT_BYTES:
            return bad(f"a result of {env['size']} bytes is over the {MAX_RESULT_BYTES} accepted")
        if len(env["data"]) > DEFAULT_BODY_BUDGET:
            return bad("a result page over the one-chunk cap")
    elif type_ == MANIFEST:
        if not 0 <= env["page"] < MAX_PARTS or not 1 <= env["pages"] <= MAX_PARTS:
            return bad("manifest page out of range")
        if len(env["items"]) > MAX_ITEMS or not 0 <= env["errors"] <= MAX_ITEMS:
            return bad("manifest too large")
        if not 1 <= env["last_seq"] <= 10**15:
            return bad("manifest last_seq out of range")
    return None


_MANIFEST_STATUSES = frozenset({"ok", "ref", "error"})


def _check_manifest_entry(seq: int, entry: object) -> Problem | None:
    if (
        not isinstance(entry, dict)
        or type(entry.get("item")) is not int
        or not 0 <= entry["item"] < MAX_ITEMS
        or entry.get("status") not in _MANIFEST_STATUSES
        or not isinstance(entry.get("id", ""), str)
    ):
        return Malformed(
            seq, "bad_manifest", "a manifest entry needs an integer 'item', a string 'id' and a status"
        )
    if entry["status"] != "error" and (
        type(entry.get("size")) is not int or not isinstance(entry.get("sha256"), str)
    ):
        return Malformed(seq, "bad_manifest", f"manifest entry of item {entry['item']} needs size and sha256")
    return None


def _ranges(seqs: list[int]) -> str:
    """'1-3, 7' for [1, 2, 3, 7] (short enough for a log line)."""
    spans: list[str] = []
    start = prev = seqs[0]
    for s in [*seqs[1:], None]:
        if s is not None and s == prev + 1:
            prev = s
            continue
        spans.append(f"{start}-{prev}" if prev != start else str(start))
        if s is not None:
            start = prev = s
    return ", ".join(spans[:20]) + (", ..." if len(spans) > 20 else "")
