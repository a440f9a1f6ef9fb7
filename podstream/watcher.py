"""Watch a job on a relay over its websocket (live, late join or replay) and save its files.

    import podstream
    for file in podstream.watch(job_id, relay="http://127.0.0.1:8000", out="out/", token=token):
        print(file.path)

Speaks the relay protocol of docs/protocol.md section 2: binary msgpack frames on `WS /v1/ws`; `auth`
first when a token is given, `sub {job, from, inline: true}`; then `ev` records strictly in `seq` order and,
after each `item` record, the item's bytes as `chunk` frames, which are written to a temp file at their
offsets, sha256-verified against the record, fsynced and renamed into place (`podstream.sinks.FileSink`).

Resume: the position is the last record *applied*; an `item` record is applied only once its file is
durable (verified, fsynced, renamed, its directory fsynced), never before. When the connection drops, or
the relay closes it with a reconnect code (4000-4499), the watcher reconnects with exponential backoff and
full jitter and subscribes again from that position, so every record and file arrives exactly once; a
partly received item is received again from its start. The position a *later* watch resumes from
(`Observer.position`, `from_seq`) never passes an item whose file is not on disk: it stops before the
first item that failed to arrive (bad size or sha256, gone from the relay, not fetchable), so a resumed
watch tries that item again. An item record whose file is already there, under its final name or as a
complete `.part` left by a watch stopped while finishing it, keeps that file once its size and sha256
match (`podstream.sinks.kept_file`) instead of writing it again. Terminal
codes (4500-4999), an `err` about the job, a rejected handshake, or a relay that cannot be reached at all
end the watch with a `TransferError`. On 4003 (token expired) a new token is fetched when `key` was given.

The end is the `done` record. A job that did not complete with every item whole raises `JobIncomplete`
after every file that did arrive was yielded (`check=False`: read `observer.outcome` instead).

`watch` runs on the `websockets` sync client and `httpx.Client`; `awatch` is the same for asyncio programs,
on the `websockets` asyncio client and `httpx.AsyncClient`. Both only carry out the steps of `WatchSteps`,
which does no I/O: it says when to connect, what to send and which HTTP request comes next (a token, an
item's file uploaded out of band, the manifest of a job that looks over), what each frame, close and answer
means, and how long to back off; `Subscription`, inside it, applies the frames and writes the files.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.parse
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import httpx
import msgpack

from podstream import frames, problems, results, sinks
from podstream.progress import (
    ItemFailure,
    JobIncomplete,
    JobOutcome,
    Observer,
    SavedFile,
    StreamProblem,
    TransferError,
)
from podstream.puller import Finished as Finished  # a step of a watch too (`WatchSteps`)
from podstream.puller import Pause as Pause  # a step of a watch too
from podstream.puller import RetryPolicy
from podstream.wire import TERMINAL_STATUSES

#: Close codes of docs/protocol.md: 4000-4499 reconnect (with backoff), 4500-4999 do not.
RECONNECT_CODES: Final = range(4000, 4500)
#: The largest frame a relay sends is a 256 KiB chunk plus its msgpack header.
MAX_FRAME: Final = 1 << 20
OPEN_TIMEOUT_S: Final = 10.0
#: How long leaving a connection (done, a resync, Ctrl-C) waits for the relay's close handshake. Frames still
#: queued unread hold it up, so a stopped watch would otherwise wait websockets' default 10 s to exit.
CLOSE_TIMEOUT_S: Final = 2.0
#: How long an HTTP request (an item's file, the job's manifest) may take between two pieces of its answer.
FETCH_TIMEOUT_S: Final = 30.0
TOKEN_TIMEOUT_S: Final = 10.0


#: `err` codes that need nothing from a single-job watcher (answers to requests it does not make).
_HARMLESS_ERRORS: Final = frozenset({"already_subscribed", "not_subscribed"})


#: Statuses after which a job sends nothing new (RunPod's terminal ones, and the relay's LOST).
FINAL_STATUSES: Final = TERMINAL_STATUSES | {"LOST"}


class Resync(Exception):
    """The stream lost its order (a gap in seq, a chunk out of place): reconnect from the last applied seq."""


class FetchFirst(Exception):
    """The item being received has no inline bytes (it was uploaded out of band, a `ref`): fetch `url`,
    hand the bytes to `Subscription.fill`, then feed the same frame again."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


def ws_url(relay: str) -> str:
    """`ws(s)://host/v1/ws` for a relay given as its http(s) (or ws(s)) base URL."""
    parsed = urllib.parse.urlsplit(relay)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parsed.scheme)
    if scheme is None or not parsed.netloc:
        raise ValueError(f"not a relay URL (http://host:port): {relay!r}")
    path = parsed.path.rstrip("/")
    if not path.endswith("/v1/ws"):
        path += "/v1/ws"
    return urllib.parse.urlunsplit((scheme, parsed.netloc, path, "", ""))


def http_url(relay: str) -> str:
    """The relay's http(s) base URL (no trailing slash) from whatever form it was given in."""
    parsed = urllib.parse.urlsplit(relay)
    scheme = {"ws": "http", "wss": "https", "http": "http", "https": "https"}.get(parsed.scheme)
    if scheme is None or not parsed.netloc:
        raise ValueError(f"not a relay URL (http://host:port): {relay!r}")
    path = parsed.path.rstrip("/")
    path = path.removesuffix("/v1/ws")
    return urllib.parse.urlunsplit((scheme, parsed.netloc, path, "", ""))


def pack(frame: Mapping[str, Any]) -> bytes:
    return msgpack.packb(dict(frame), use_bin_type=True)


@dataclass
class _Receiving:
    """The item whose chunks are arriving: its `item` record and where its bytes go."""

    seq: int
    item: int
    id: str
    mime: str
    size: int
    sha256: str
    sink: sinks.FileSink
    url: str = ""
    received: int = 0


class Subscription:
    """One job's subscription, without I/O: feed it decoded frames, send what it returns.

    `subscribe()` is the `sub` frame for the current position (call it on every (re)connect, after
    `reset()`); `feed(frame)` applies one server frame and returns (frames to send, files saved). It raises
    `Resync` when the connection must be dropped and re-subscribed, and `TransferError` for a terminal
    error. `done` is true once the `done` record was applied; `outcome` is then final.
    """

    def __init__(
        self, job: str, out: Path, observer: Observer | None = None, *, from_seq: int = 0, fsync: bool = True
    ) -> None:
        if from_seq < 0:
            raise ValueError("from_seq must be >= 0")
        self.job = job
        self.out = out
        self.observer = observer or Observer()
        self.fsync = fsync
        self.position = from_seq
        #: Where a later watch resumes (what `observer.position` last got): `position`, held before the first
        #: item this watch could not save.
        self.resume_from = from_seq
        self._held = False
        self.head: int | None = None
        self.done = False
        self.ping_interval: float | None = None
        #: Set when the relay has nothing after our position for a job that looks over: the driver then
        #: reads the manifest and calls `finished_by_manifest`.
        self.check_finished = False
        self.outcome = JobOutcome(job)
        self._last_status = "UNKNOWN"
        self._receiving: _Receiving | None = None
        out.mkdir(parents=True, exist_ok=True)

    def subscribe(self) -> dict[str, Any]:
        return frames.sub(self.job, self.position, inline=True)

    def reset(self) -> None:
        """The connection is gone: an item whose bytes were arriving will be sent again from its start."""
        if self._receiving is not None:
            self._receiving.sink.abort()
            self._receiving = None

    def feed(self, frame: object) -> tuple[list[dict[str, Any]], list[SavedFile]]:
        if not isinstance(frame, dict) or not isinstance(frame.get("t"), str):
            raise Resync(f"the relay sent a frame that is not a typed map: {str(frame)[:100]}")
        kind = frame["t"]
        if kind == "ping":
            n = frame.get("n")
            return [frames.pong(n if isinstance(n, int) else 0)], []
        if kind == "welcome":
            ping = frame.get("ping")
            self.ping_interval = float(ping) if isinstance(ping, int | float) else None
            return [], []
        if kind == "err":
            if frame.get("job") not in (None, self.job):
                return [], []
            if frame.get("code") == "media_unavailable" and self._receiving is not None:
                # The item's file is gone from the relay (retention): report it, go on with the next record.
                self._give_up_item(f"{frame.get('message') or 'its file is no longer available'}")
                return [], []
            if frame.get("code") in _HARMLESS_ERRORS:
                return [], []
            if frame.get("code") == "not_found":
                raise TransferError(problems.sentence(problems.Code.JOB_NOT_FOUND, job=self.job))
            if frame.get("code") == "forbidden":
                reason = str(frame.get("message") or f"reading the job {self.job}")
                raise TransferError(problems.sentence(problems.Code.NOT_ALLOWED, reason=reason))
            raise TransferError(f"the relay refused: {frame.get('code')}: {frame.get('message')}")
        if frame.get("job") != self.job:
            return [], []  # another subscription's frame (this one only sends ours)
        if kind == "subscribed":
            self._on_subscribed(frame)
            return [], []
        if kind == "ev":
            return [], self._on_record(frame)
        if kind == "chunk":
            return [], self._on_chunk(frame)
        return [], []  # frame types from a newer relay: ignore

    def _on_subscribed(self, frame: Mapping[str, Any]) -> None:
        head = frame.get("head")
        self.head = head if isinstance(head, int) else None
        expected = frame.get("expected_items")
        if isinstance(expected, int) and not isinstance(expected, bool):
            self.outcome.expected_items = expected  # what the input asks for, counted at submit
        status = frame.get("status")
        if isinstance(status, str) and status:
            self._status(status)
        if frame.get("recovered") is False and self.position > 0:
            # We asked for records after a seq the relay never had (its data is not what we saw): start over.
            self.observer.problem(
                StreamProblem(
                    "not_recovered", f"the relay has no seq {self.position}; receiving the job again"
                )
            )
            self._held = False
            self._advance(0)
            raise Resync("starting over from seq 0")
        if self.head is not None and self.head <= self.position and self._last_status in FINAL_STATUSES:
            # Nothing after our position and the job looks over: only its manifest can say whether it is.
            self.check_finished = True

    def finished_by_manifest(self, manifest: Mapping[str, Any]) -> None:
        """After `check_finished`: the relay's manifest of the job (`GET /v1/jobs/{id}`). When it is finished
        and we hold everything up to its head, the watch is done (there is no `done` record left to send)."""
        self.check_finished = False
        head = manifest.get("head")
        if manifest.get("finished") is True and isinstance(head, int) and head <= self.position:
            status = manifest.get("status")
            if isinstance(status, str):
                self._status(status)
            items, expected = manifest.get("items"), manifest.get("expected_items")
            if isinstance(expected, int) and not isinstance(expected, bool):
                self.outcome.expected_items = expected
            elif isinstance(items, list) and self.outcome.expected_items is None:
                self.outcome.expected_items = len(items)
            self.done = True
            self.observer.finished(self.outcome)

    def _on_record(self, rec: Mapping[str, Any]) -> list[SavedFile]:
        seq = rec.get("seq")
        if not isinstance(seq, int):
            raise Resync("an ev frame without an integer seq")
        if seq <= self.position:
            return []  # already applied (a replay overlapping what we had)
        saved: list[SavedFile] = []
        receiving = self._receiving
        if receiving is not None and receiving.received == 0 and seq == receiving.seq + 1:
            if receiving.size == 0:
                saved = self._complete(receiving)  # an empty file may come without any chunk
            elif receiving.url:
                raise FetchFirst(receiving.url)  # no chunks followed its record: a file uploaded out of band
        if self._receiving is not None:
            raise Resync(f"record {seq} arrived before the last chunk of item {self._receiving.item}")
        if seq != self.position + 1:
            raise Resync(f"records {self.position + 1}..{seq - 1} were skipped")
        kind = rec.get("k")
        if kind == "item":
            return [*saved, *self._on_item(seq, rec)]
        if kind == "status":
            self._status(str(rec.get("status")))
            if rec.get("error"):
                self.outcome.error = str(rec["error"])
        elif kind == "progress":
            self.observer.item_progress(_int(rec, "item"), _int(rec, "step"), _int(rec, "steps"))
        elif kind == "error":
            self._on_error(rec)
        elif kind == "result":  # a wrapped handler's value: its files were all recorded before it
            self.outcome.result = results.write_value(self.out, rec.get("value"), self.outcome.files)
        elif kind == "done":
            self._on_done(rec)
        self._advance(seq)
        return saved

    def _on_item(self, seq: int, rec: Mapping[str, Any]) -> list[SavedFile]:
        item, size = _int(rec, "item"), _int(rec, "size")
        id_, mime, sha256 = str(rec.get("id") or ""), str(rec.get("mime") or ""), str(rec.get("sha256") or "")
        self.observer.item_started(item, id_, mime, size)
        kept = sinks.kept_file(self.out, item, id_, mime, size, sha256, fsync=self.fsync)
        if kept is not None:
            # An earlier watch finished this file but stopped before moving past it: keep it. Its chunks,
            # still on their way, are then at or before the position and dropped.
            return self._saved(SavedFile(item, id_, mime, size, sha256, kept), seq)
        sink = sinks.FileSink(self.out, item, id_, mime, size, fsync=self.fsync)
        url = rec.get("url")
        self._receiving = _Receiving(
            seq, item, id_, mime, size, sha256, sink, url if isinstance(url, str) else ""
        )
        return []

    def fill(self, chunks: Iterable[bytes]) -> list[SavedFile]:
        """The bytes of the item being received, fetched from its URL after a `FetchFirst`."""
        receiving = self._receiving
        if receiving is None:
            return []
        for data in chunks:
            if receiving.received + len(data) > receiving.size:
                break
            receiving.sink.write(receiving.received, data)
            receiving.received += len(data)
            self.observer.item_bytes(receiving.item, receiving.received, receiving.size)
        return self._complete(receiving)

    def fetch_failed(self, url: str, reason: str) -> None:
        """The item's URL could not be fetched: report it and go on with the next record."""
        self._give_up_item(f"cannot fetch {url}: {reason}", "fetch_failed")

    def _give_up_item(self, reason: str, code: str = "media_unavailable") -> None:
        receiving = self._receiving
        if receiving is None:
            return
        receiving.sink.abort()
        self._receiving = None
        self._lost(receiving.seq, StreamProblem(code, f"item {receiving.item}: {reason}"))

    def _on_chunk(self, frame: Mapping[str, Any]) -> list[SavedFile]:
        receiving = self._receiving
        seq, off, data = frame.get("seq"), frame.get("off"), frame.get("data")
        if receiving is None or seq != receiving.seq:
            if isinstance(seq, int) and seq <= self.position:
                return []  # bytes of an item already saved
            raise Resync(f"a chunk of record {seq} arrived while none was expected")
        if not isinstance(data, bytes) or off != receiving.received:
            raise Resync(f"chunk of item {receiving.item} at offset {off}, expected {receiving.received}")
        if receiving.received + len(data) > receiving.size:
            receiving.sink.abort()
            self._receiving = None
            raise Resync(f"item {receiving.item} is longer than its record says ({receiving.size} bytes)")
        receiving.sink.write(receiving.received, data)
        receiving.received += len(data)
        self.observer.item_bytes(receiving.item, receiving.received, receiving.size)
        if not frame.get("last"):
            return []
        return self._complete(receiving)

    def _advance(self, seq: int) -> None:
        self.position = seq
        if not self._held:
            self.resume_from = seq
            self.observer.position(seq)

    def _complete(self, receiving: _Receiving) -> list[SavedFile]:
        """All bytes of the item are in: verify, fsync and rename its file, and only then move past it."""
        self._receiving = None
        if receiving.received != receiving.size:
            receiving.sink.abort()
            message = f"item {receiving.item} is {receiving.received} bytes, expected {receiving.size}"
            self._lost(receiving.seq, StreamProblem("bad_size", message))
            return []
        try:
            ok, path = receiving.sink.finish(receiving.sha256)
        except BaseException:
            # Stopped while finishing (Ctrl-C, a full disk): the position stays before the item, and the
            # `.part`, if it is whole, is kept by the next watch (`sinks.kept_file`).
            receiving.sink.close()
            raise
        if not ok:
            message = f"item {receiving.item} does not match its sha256"
            self._lost(receiving.seq, StreamProblem("bad_sha256", message))
            return []
        saved = SavedFile(
            receiving.item, receiving.id, receiving.mime, receiving.size, receiving.sha256, Path(path)
        )
        return self._saved(saved, receiving.seq)

    def _saved(self, saved: SavedFile, seq: int) -> list[SavedFile]:
        """The item record at `seq` is applied: its file is durable."""
        self.outcome.files.append(saved)
        self._advance(seq)
        self.observer.item_saved(saved)
        return [saved]

    def _lost(self, seq: int, problem: StreamProblem) -> None:
        """The item record at `seq` is applied without its file: reported, and a later watch resumes before
        it (this one moves on: the same bytes would fail the same way)."""
        self._problem(problem)
        self._held = True
        self._advance(seq)

    def _on_error(self, rec: Mapping[str, Any]) -> None:
        code, message = str(rec.get("code") or "error"), str(rec.get("message") or "")
        item = rec.get("item")
        if isinstance(item, int) and not isinstance(item, bool):
            if any(f.item == item for f in self.outcome.failures):
                # A lost item can be reported more than once (`incomplete`, then `missing_item` from the
                # manifest check): it is one failed item, counted and shown once.
                return
            failure = ItemFailure(item, str(rec.get("id") or ""), code, message)
            self.outcome.failures.append(failure)
            self.observer.item_failed(failure)
        elif code == "restarted":
            # RunPod re-ran the job: the item records that follow replace the earlier run's.
            self.outcome.files.clear()
            self.outcome.failures.clear()
            self.observer.problem(StreamProblem(code, message))
        elif code == "duplicate":
            pass  # informational: the relay ignored a repeated envelope, nothing was lost
        else:
            self._problem(StreamProblem(code, message))

    def _on_done(self, rec: Mapping[str, Any]) -> None:
        status = rec.get("status")
        if isinstance(status, str):
            self._status(status)
        items = rec.get("items")
        # `items` is what the job recorded; a job stopped early recorded fewer than its input asked for,
        # so the count from `subscribed` (the input's) stands when the relay gave one.
        if self.outcome.expected_items is None:
            if isinstance(items, int) and not isinstance(items, bool):
                self.outcome.expected_items = items
            elif isinstance(items, list):
                self.outcome.expected_items = len(items)
        self.outcome.status = self._last_status
        self.done = True
        self.observer.finished(self.outcome)

    def _status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self.outcome.status = status
            self.observer.status(status)

    def _problem(self, problem: StreamProblem) -> None:
        self.outcome.problems.append(problem)
        self.observer.problem(problem)


def _int(rec: Mapping[str, Any], name: str) -> int:
    value = rec.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Resync(f"record field {name!r} is not an integer")
    return value


def mint_token(relay: str, job: str, key: str, *, timeout: float = TOKEN_TIMEOUT_S) -> str | None:
    """A subscriber token for `job` from the relay (`POST /v1/jobs/{job}/tokens` with API key `key`).

    Returns None when the relay has no token endpoint (a relay without auth).
    """
    request = _token_request(relay, job, key, timeout)
    try:
        response = httpx.post(request.url, headers=request.headers, timeout=request.timeout)
    except httpx.HTTPError as exc:
        raise _token_failure(relay, exc) from None
    return _token_answer(job, response.status_code, response.text)


def _token_request(relay: str, job: str, key: str, timeout: float = TOKEN_TIMEOUT_S) -> Fetch:
    url = f"{http_url(relay)}/v1/jobs/{urllib.parse.quote(job, safe='')}/tokens"
    return Fetch(url, {"Authorization": f"Bearer {key}"}, "POST", timeout, follow_redirects=False)


def _token_failure(relay: str, exc: httpx.HTTPError) -> TransferError:
    if isinstance(exc, httpx.ConnectError):
        reached = problems.sentence(problems.Code.RELAY_UNREACHABLE, url=http_url(relay))
        return TransferError(f"{reached}: {exc or type(exc).__name__}")
    return TransferError(f"asking the relay for a token: {type(exc).__name__} {exc}")


def _token_answer(job: str, status: int, text: str) -> str | None:
    refused = problems.refusal(status, text, credential="key", job=job)
    if refused is not None:
        raise TransferError(f"{refused[1]} (HTTP {status})")
    if status in (404, 405) and "token" not in text:
        return None
    if status >= 400:
        raise TransferError(f"asking the relay for a token: HTTP {status}: {text[:200]}")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str):
        raise TransferError("the relay's token answer has no token")
    return token


# ----------------------------------------------------------------------------------- the steps of a watch


@dataclass(frozen=True)
class Connect:
    """Open a websocket to `url` (`MAX_FRAME`, no compression, `OPEN_TIMEOUT_S`), then call
    `WatchSteps.connected`; hand the error to `WatchSteps.dropped` when it cannot be opened."""

    url: str


@dataclass(frozen=True)
class Send:
    """Send `data`, one packed frame, on the open websocket."""

    data: bytes


@dataclass(frozen=True)
class Receive:
    """Read the next message of the open websocket and hand it to `WatchSteps.received`."""


@dataclass(frozen=True)
class Close:
    """Close the websocket, waiting at most `CLOSE_TIMEOUT_S` for the relay's close handshake."""


@dataclass(frozen=True)
class Fetch:
    """Send `method url` over HTTP; hand its status and body (in pieces, as they arrive or gathered) to
    `WatchSteps.fetched`, or the `httpx.HTTPError` that took its place to `WatchSteps.fetch_failed`."""

    url: str
    headers: dict[str, str]
    method: str = "GET"
    timeout: float = FETCH_TIMEOUT_S
    #: A relay run with --media-redirect answers an item's URL with 302 to the bucket; httpx does not carry
    #: Authorization over to another origin.
    follow_redirects: bool = True


Step = Connect | Send | Receive | Close | Fetch | Pause | Finished
_Purpose = Literal["token", "media", "manifest"]


class WatchSteps:
    """All of `watch` except the I/O: when to connect, what to send, what each frame, close and HTTP answer
    means, and how long to back off before subscribing again.

    Contract: call `next()` for the step to take, until it is `Finished`. After `Connect`, call `connected`
    once the websocket is open. Every message `Receive` got goes to `received`, which returns the files it
    completed. A websocket that failed to open, closed or broke during `Connect`, `Send` or `Receive`
    (`websockets.exceptions.ConnectionClosed`, `InvalidHandshake`, `OSError`) goes to `dropped`; the
    connection is then over, and a `Close` step follows when one was open. After `Fetch`, call `fetched`
    or `fetch_failed` once; they return files too. After `Pause`, wait. Call `close` in every case, and close
    a websocket still open. The end of the watch (a terminal close code, an `err` about the job, a rejected
    handshake, a relay never reached, too many failures in a row) raises `TransferError`. `watch` and
    `awatch` drive it, on the `websockets` sync and asyncio clients.
    """

    def __init__(
        self,
        job: str,
        *,
        relay: str,
        out: str | os.PathLike[str],
        from_seq: int = 0,
        token: str | None = None,
        key: str | None = None,
        observer: Observer | None = None,
        retry: RetryPolicy | None = None,
        fsync: bool = True,
    ) -> None:
        self.url = ws_url(relay)
        self.relay = relay
        self.job = job
        self.token = token
        self.key = key
        self.retry = retry or RetryPolicy(attempts=12)
        self.sub = Subscription(job, Path(out), observer, from_seq=from_seq, fsync=fsync)
        self._connected_once = False  # the relay was reached once: a failure to connect is worth retrying
        self._open = False  # the driver holds an open websocket
        self._failures = 0  # failed connections in a row
        self._outbox: deque[bytes] = deque()
        self._fetch: Fetch | None = None
        self._purpose: _Purpose = "token"
        self._held: object = None  # the frame to feed again once its item's file is fetched
        self._before = 0  # the position before the frame being applied
        self._reason: str | None = None  # why the connection dropped, while a new token is fetched
        self._pause: float | None = None
        self._finished: Finished | None = None
        if token is None and key is not None:
            self._request("token", _token_request(relay, job, key))

    @property
    def credential(self) -> problems.Credential:
        """What the connection authenticates with, as the user gave it: a token minted here from the
        key is the key's doing."""
        return "key" if self.key else ("token" if self.token else None)

    def next(self) -> Step:
        """The step to take now."""
        if self._finished is not None:
            return self._finished
        if self._open and (self._pause is not None or self._reason is not None or self.sub.done):
            self._open = False
            return Close()
        if self._fetch is not None:
            return self._fetch
        if self._open:
            return Send(self._outbox.popleft()) if self._outbox else Receive()
        if self.sub.done:
            self._finished = Finished(self.sub.outcome)
            return self._finished
        if self._pause is not None:
            pause, self._pause = Pause(self._pause), None
            return pause
        return Connect(self.url)

    def connected(self) -> None:
        """The `Connect`'s websocket is open: authenticate and subscribe from the current position."""
        self._open = True
        self._connected_once = True
        auth = [pack(frames.auth(self.token))] if self.token else []
        self._outbox = deque([*auth, pack(self.sub.subscribe())])

    def received(self, message: str | bytes) -> list[SavedFile]:
        """A message of the websocket; returns the files it completed."""
        self._before = self.sub.position
        try:
            frame = _unpack(message)
        except Resync as exc:
            self._drop(str(exc))
            return []
        return self._feed(frame)

    def dropped(self, error: Exception) -> None:
        """The websocket could not be opened, or closed, or broke. Raises `TransferError` when that ends
        the watch."""
        from websockets.exceptions import ConnectionClosed, ConnectionClosedOK

        if isinstance(error, ConnectionClosedOK):
            reason = "the relay closed the connection"
        elif isinstance(error, ConnectionClosed):
            close = error.rcvd
            reason = self._closed(close.code, close.reason) if close else self._closed(None, "")
        else:
            reason = self._failed(error)
        self._drop(reason)

    def fetched(self, status: int, body: Iterable[bytes]) -> list[SavedFile]:
        """The `Fetch`'s answer: its HTTP status and its body. An error raised while reading `body` leaves
        the `Fetch` open for `fetch_failed`."""
        if self._purpose == "token":
            text = b"".join(body).decode("utf-8", "replace")
            self._fetch = None
            self.token = _token_answer(self.job, status, text)
            if self._reason is not None:  # a drop waited for the token to reconnect with
                reason, self._reason = self._reason, None
                self._back_off(reason)
            return []
        if self._purpose == "manifest":
            try:
                manifest = json.loads(b"".join(body)) if status == 200 else {}
            except ValueError:
                manifest = {}
            self._fetch = None
            self.sub.finished_by_manifest(manifest if isinstance(manifest, dict) else {})
            return []
        url = self._fetch.url if self._fetch else ""
        if status != 200:
            self._fetch = None
            self.sub.fetch_failed(url, f"HTTP {status}")
            return self._feed(self._take_held())
        try:
            filled = self.sub.fill(body)
        except OSError as exc:  # the disk, not the network: received again after a reconnect
            self._fetch = None
            self._drop(self._failed(exc))
            return []
        self._fetch = None
        return [*filled, *self._feed(self._take_held())]

    def fetch_failed(self, error: httpx.HTTPError) -> list[SavedFile]:
        """The `Fetch` failed: no answer, or its body broke off."""
        url = self._fetch.url if self._fetch else ""
        self._fetch = None
        if self._purpose == "token":
            raise _token_failure(self.relay, error)
        if self._purpose == "manifest":
            self.sub.finished_by_manifest({})  # the watch just goes on
            return []
        self.sub.fetch_failed(url, f"{type(error).__name__} {error}".rstrip())
        return self._feed(self._take_held())

    def close(self) -> None:
        """Abandon an item whose bytes were arriving."""
        self.sub.reset()

    def _feed(self, frame: object) -> list[SavedFile]:
        try:
            replies, saved = self.sub.feed(frame)
        except FetchFirst as fetch:
            self._held = frame
            self._request("media", self._relay_request(fetch.url))
            return []
        except Resync as exc:
            self._drop(str(exc))
            return []
        except OSError as exc:  # the disk, not the network: received again after a reconnect
            self._drop(self._failed(exc))
            return []
        if self.sub.position != self._before:
            self._failures = 0  # progress made: the next drop starts a fresh backoff
        if self.sub.check_finished:
            manifest = f"/v1/jobs/{urllib.parse.quote(self.job, safe='')}"
            self._request("manifest", self._relay_request(manifest, follow_redirects=False))
        self._outbox.extend(pack(reply) for reply in replies)
        return saved

    def _take_held(self) -> object:
        frame, self._held = self._held, None
        return frame

    def _request(self, purpose: _Purpose, fetch: Fetch) -> None:
        self._purpose, self._fetch = purpose, fetch

    def _relay_request(self, url: str, *, follow_redirects: bool = True) -> Fetch:
        """A GET of `url` (relative to the relay); the token goes only to the relay itself, never elsewhere."""
        base = http_url(self.relay)
        absolute = urllib.parse.urljoin(base + "/", url)
        same_origin = urllib.parse.urlsplit(absolute)[:2] == urllib.parse.urlsplit(base)[:2]
        headers = {"Authorization": f"Bearer {self.token}"} if self.token and same_origin else {}
        return Fetch(absolute, headers, follow_redirects=follow_redirects)

    def _closed(self, code: int | None, reason: str) -> str:
        """After a close: raise for terminal codes, else the reason to report before reconnecting."""
        if code is not None and frames.is_terminal_close(code):
            refused = problems.closed(code, credential=self.credential)
            if refused is not None:
                # The relay's reason is not repeated: it cannot tell a token from a key it does not know.
                raise TransferError(f"{refused[1]} (close code {code})")
            raise TransferError(f"the relay closed the connection: {code} {reason}".rstrip())
        if code == frames.CloseCode.TOKEN_EXPIRED:
            if self.key is None:
                expired = problems.sentence(problems.Code.TOKEN_EXPIRED)
                raise TransferError(f"{expired} (no API key was given to get one with)")
            self._request("token", _token_request(self.relay, self.job, self.key))
        return f"connection closed ({code} {reason})".rstrip() if code is not None else reason

    def _failed(self, exc: Exception) -> str:
        """After an error of the network or the disk: raise when it ends the watch, else the reason."""
        from websockets.exceptions import InvalidStatus

        if isinstance(exc, InvalidStatus):
            status, body = exc.response.status_code, exc.response.body
            refused = problems.refusal(status, body or b"", credential=self.credential, job=self.job)
            if refused is not None:
                raise TransferError(f"{refused[1]} (HTTP {status})")
            raise TransferError(f"the relay refused the websocket (HTTP {status}) at {self.url}")
        if not self._connected_once:
            reached = problems.sentence(problems.Code.RELAY_UNREACHABLE, url=http_url(self.relay))
            raise TransferError(f"{reached}: {exc or type(exc).__name__}")
        return f"cannot reconnect: {type(exc).__name__} {exc}".rstrip()

    def _drop(self, reason: str) -> None:
        """The connection is over: an item whose bytes were arriving is received again from its start."""
        self._outbox.clear()
        self._held = None
        if self.sub.done:
            return
        self.sub.reset()
        if self._fetch is not None:  # the token to reconnect with comes first
            self._reason = reason
            return
        self._back_off(reason)

    def _back_off(self, reason: str) -> None:
        self._failures += 1
        if self._failures >= self.retry.attempts:
            raise TransferError(f"giving up after {self._failures} failed attempts in a row; last: {reason}")
        self._pause = self.retry.delay(self._failures)
        self.sub.observer.reconnecting(self._failures, self._pause, reason)


def _finish(outcome: JobOutcome, check: bool) -> None:
    if check and not outcome.ok:
        raise JobIncomplete(outcome)


# --------------------------------------------------------------------------------------------- sync


def watch(
    job: str,
    *,
    relay: str,
    out: str | os.PathLike[str],
    from_seq: int = 0,
    token: str | None = None,
    key: str | None = None,
    observer: Observer | None = None,
    retry: RetryPolicy | None = None,
    check: bool = True,
    fsync: bool = True,
) -> Iterator[SavedFile]:
    """Subscribe to `job` on the relay at `relay` (its http(s) URL) from `from_seq`; save files in `out`.

    `token` is a subscriber token (from `POST /v1/jobs`); with only an API `key`, one is requested from
    the relay. Yields each `SavedFile` once it is saved and verified; see the module docstring for errors.
    """
    from websockets.exceptions import ConnectionClosed, InvalidHandshake
    from websockets.sync.client import ClientConnection, connect

    steps = WatchSteps(
        job, relay=relay, out=out, from_seq=from_seq, token=token, key=key, observer=observer, retry=retry,
        fsync=fsync,
    )  # fmt: skip
    http = httpx.Client()
    socket = ExitStack()  # holds the open websocket, if any: closing it closes the websocket
    ws: ClientConnection | None = None
    try:
        while not isinstance(step := steps.next(), Finished):
            if isinstance(step, Pause):
                time.sleep(step.seconds)
            elif isinstance(step, Fetch):
                yield from _fetch(http, steps, step)
            elif isinstance(step, Connect):
                try:
                    ws = socket.enter_context(connect(
                        step.url, max_size=MAX_FRAME, compression=None, open_timeout=OPEN_TIMEOUT_S,
                        close_timeout=CLOSE_TIMEOUT_S,
                    ))  # fmt: skip
                except (InvalidHandshake, OSError) as exc:
                    steps.dropped(exc)
                    continue
                steps.connected()
            elif isinstance(step, Close):
                socket.close()
                ws = None
            else:
                assert ws is not None, "Send and Receive come only while a websocket is open"
                try:
                    if isinstance(step, Send):
                        ws.send(step.data)
                        continue
                    message = ws.recv()
                except (ConnectionClosed, OSError) as exc:
                    steps.dropped(exc)
                    continue
                yield from steps.received(message)
    finally:
        socket.close()
        steps.close()
        http.close()
    _finish(step.outcome, check)


def _fetch(http: httpx.Client, steps: WatchSteps, fetch: Fetch) -> list[SavedFile]:
    """Carry out `fetch`: its body goes to `steps` piece by piece as it arrives."""
    try:
        with http.stream(
            fetch.method, fetch.url, headers=fetch.headers, timeout=fetch.timeout,
            follow_redirects=fetch.follow_redirects,
        ) as response:  # fmt: skip
            return steps.fetched(response.status_code, response.iter_bytes())
    except httpx.HTTPError as exc:
        return steps.fetch_failed(exc)


# -------------------------------------------------------------------------------------------- async


async def awatch(
    job: str,
    *,
    relay: str,
    out: str | os.PathLike[str],
    from_seq: int = 0,
    token: str | None = None,
    key: str | None = None,
    observer: Observer | None = None,
    retry: RetryPolicy | None = None,
    check: bool = True,
    fsync: bool = True,
) -> AsyncIterator[SavedFile]:
    """`watch` for asyncio programs: the same arguments, an async iterator of `SavedFile`."""
    from websockets.asyncio.client import ClientConnection, connect
    from websockets.exceptions import ConnectionClosed, InvalidHandshake

    steps = WatchSteps(
        job, relay=relay, out=out, from_seq=from_seq, token=token, key=key, observer=observer, retry=retry,
        fsync=fsync,
    )  # fmt: skip
    http = httpx.AsyncClient()
    socket = AsyncExitStack()  # holds the open websocket, if any: closing it closes the websocket
    ws: ClientConnection | None = None
    try:
        while not isinstance(step := steps.next(), Finished):
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
            elif isinstance(step, Fetch):
                for file in await _afetch(http, steps, step):
                    yield file
            elif isinstance(step, Connect):
                try:
                    ws = await socket.enter_async_context(connect(
                        step.url, max_size=MAX_FRAME, compression=None, open_timeout=OPEN_TIMEOUT_S,
                        close_timeout=CLOSE_TIMEOUT_S,
                    ))  # fmt: skip
                except (InvalidHandshake, OSError) as exc:
                    steps.dropped(exc)
                    continue
                steps.connected()
            elif isinstance(step, Close):
                await socket.aclose()
                ws = None
            else:
                assert ws is not None, "Send and Receive come only while a websocket is open"
                try:
                    if isinstance(step, Send):
                        await ws.send(step.data)
                        continue
                    message = await ws.recv()
                except (ConnectionClosed, OSError) as exc:
                    steps.dropped(exc)
                    continue
                for file in steps.received(message):
                    yield file
    finally:
        await socket.aclose()
        steps.close()
        await http.aclose()
    _finish(step.outcome, check)


async def _afetch(http: httpx.AsyncClient, steps: WatchSteps, fetch: Fetch) -> list[SavedFile]:
    """`_fetch` on an `httpx.AsyncClient`."""
    try:
        async with http.stream(
            fetch.method, fetch.url, headers=fetch.headers, timeout=fetch.timeout,
            follow_redirects=fetch.follow_redirects,
        ) as response:  # fmt: skip
            # Fetches are rare (a file uploaded out of band, a manifest, a token): the body is gathered,
            # then handed over whole.
            body = [piece async for piece in response.aiter_bytes()]
    except httpx.HTTPError as exc:
        return steps.fetch_failed(exc)
    return steps.fetched(response.status_code, body)


def _unpack(message: str | bytes) -> object:
    if isinstance(message, str):
        raise Resync("the relay sent a text frame; the protocol uses binary msgpack frames")
    try:
        return msgpack.unpackb(message, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise Resync(f"the relay sent a frame that is not msgpack: {exc}") from None
