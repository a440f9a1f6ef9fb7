"""Pull a job's files straight from RunPod's `/stream`, without a relay.

This is the way to consume the podstream worker when you run no relay: one process long-polls
`GET {endpoint_url}/stream/{job}?wait=ms`, feeds every streamed envelope to `podstream.wire.Assembler`
(which checks seq gaps, duplicates, part sizes and sha256), writes each item's parts straight to disk
through `podstream.sinks.file_sinks`, and yields each file as soon as it is complete and verified:

    import podstream
    for file in podstream.pull(job_id, runpod_url="https://api.runpod.ai/v2/ENDPOINT", key=KEY, out="out/"):
        print(file.path, file.size)

RunPod's `/stream` *drains*: each call hands out only items no earlier call got, so there must be exactly
one puller per job (a relay, or this). The stream has ended when the job's status is terminal AND a call
returns no items; the last items can come together with COMPLETED. A FAILED job's error is not on the
stream, so it is read from `/status`. 429 and 5xx answers, timeouts and dropped connections are retried
with exponential backoff and full jitter (`podstream.backoff`), honouring `Retry-After`; a rejected key, an unknown job or an
unreachable server end the pull with a `TransferError` at once.

At the end, a job that did not complete with every item whole raises `JobIncomplete` (its `outcome` says
what arrived, which items failed on the worker, and which gaps or corruption were found), after every file
that did arrive was yielded. Pass `check=False` to get the outcome from the observer instead.

`pull` is a plain generator on `httpx.Client`; `apull` is the same on `httpx.AsyncClient` for asyncio
programs. Both only carry out the steps of `PullSteps`, which does no network I/O: it says which request
comes next, what each answer means (retry, wait, end) and feeds the entries to `StreamDrain`, which
reassembles and writes the files.

Throughput: a `/stream` answer can be large (everything buffered at RunPod, 100 MB of base64), so it is
taken in pieces as it arrives, never held or JSON-decoded whole: `podstream.stream_split.StreamSplitter`
(the relay's splitter) cuts it into entries while the bytes come in, and each entry is parsed on its own
(`entry_output` slices a part's base64 out of the text instead of JSON-decoding it). Receiving and
splitting run in a thread of their own (`pull`) or a task (`apull`), handing entries over through a small
bounded queue, while the consumer decodes, hashes and writes the entries before them; the first files are
yielded before the answer's last byte has arrived. The observer is called from the consumer's thread
(`pull`) or from one worker thread at a time (`apull`, which keeps the event loop free meanwhile).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from podstream import problems, results, sinks, wire
from podstream.backoff import MAX_RETRY_AFTER_S, Backoff, retry_after_seconds
from podstream.progress import (
    ItemFailure,
    JobIncomplete,
    JobOutcome,
    Observer,
    SavedFile,
    StreamProblem,
    TransferError,
)
from podstream.stream_split import StreamSplitter, entry_output
from podstream.wire import TERMINAL_STATUSES

#: How long RunPod may hold one `/stream` request open waiting for an item (RunPod allows 1000..300000).
DEFAULT_WAIT_MS: Final = 30_000
#: Extra read time allowed on top of `wait` before a long-poll counts as timed out.
READ_SLACK_S: Final = 20.0
#: An empty, non-final answer quicker than this means the server does not hold requests: pause a little.
_MIN_POLL_S: Final = 0.1
_IDLE_PAUSE_S: Final = 0.25
_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
#: Pieces of an answer (each the entries one received chunk completed) received ahead of the consumer:
#: bounds memory to about this many parts while keeping the network busy.
_AHEAD_PIECES: Final = 16
RUNPOD_API_BASE: Final = "https://api.runpod.ai/v2"


@dataclass(frozen=True)
class RetryPolicy:
    """How a transfer retries: `attempts` failures in a row end it (a success resets the count); the
    waits are `podstream.backoff.Backoff(base, cap)` (exponential, full jitter), never shorter than a
    server's `Retry-After` (honoured up to `max_retry_after`)."""

    attempts: int = 8
    base: float = 0.5
    cap: float = 30.0
    max_retry_after: float = MAX_RETRY_AFTER_S

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait after failure number `attempt` (from 1) in a row."""
        return Backoff(self.base, self.cap).delay(
            attempt - 1, retry_after=retry_after, max_retry_after=self.max_retry_after
        )


def endpoint_url(runpod_url: str | None = None, endpoint: str | None = None) -> str:
    """The endpoint's base URL (`.../v2/{endpoint_id}`) from an explicit URL or a bare endpoint id."""
    if runpod_url:
        parsed = urllib.parse.urlsplit(runpod_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"not an http(s) URL: {runpod_url!r}")
        return runpod_url.rstrip("/")
    if endpoint:
        return f"{RUNPOD_API_BASE}/{urllib.parse.quote(endpoint, safe='')}"
    raise ValueError("give the endpoint's URL (…/v2/ENDPOINT_ID) or its id")


# ------------------------------------------------------------------------------------------- the core


class _ObservedSink:
    """A file sink that tells the observer how many bytes of its item have arrived."""

    def __init__(self, inner: wire.ItemSink, item: int, size: int, observer: Observer) -> None:
        self._inner = inner
        self._item = item
        self._size = size
        self._observer = observer
        self._received = 0

    def write(self, offset: int, data: bytes) -> None:
        self._inner.write(offset, data)
        self._received += len(data)
        self._observer.item_bytes(self._item, self._received, self._size)

    def finish(self, sha256: str) -> tuple[bool, Any]:
        return self._inner.finish(sha256)

    def abort(self) -> None:
        self._inner.abort()


class StreamDrain:
    """One consumer of one job's RunPod `/stream`, without I/O.

    Feed it every `/stream` response body with `feed`; it returns the files that body completed (and any
    `wire.ItemRef` whose file must be fetched from its URL, see `save_ref`). Once `ended` is true (status
    terminal and an empty stream) call `finish` for the outcome. `close` abandons unfinished items.
    `job` None takes the job of the first envelope (`wire.Assembler`).
    """

    def __init__(
        self, job: str | None, out: Path, observer: Observer | None = None, *, fsync: bool = True
    ) -> None:
        self.job = job
        self.out = out
        self.observer = observer or Observer()
        self.fsync = fsync
        self.status = "UNKNOWN"
        self.ended = False
        self.polls = 0
        #: Entries the stream handed this drain, of any kind: none at all from a COMPLETED job means
        #: another reader drained it first (a worker that completes sends its manifest, at least).
        self.entries = 0
        self.outcome = JobOutcome(job or "")
        files = sinks.file_sinks(out, fsync=fsync)

        def factory(item: int, id: str, mime: str, size: int) -> wire.ItemSink:
            self.observer.item_started(item, id, mime, size)
            return _ObservedSink(files(item, id, mime, size), item, size, self.observer)

        self.assembler = wire.Assembler(job, factory)

    def feed(self, body: object) -> list[SavedFile | wire.ItemRef]:
        """Apply one whole `/stream` answer `{"status", "stream": [{"output": envelope}, ...]}`."""
        stream = _check_answer(body)
        outputs = [chunk.get("output") if isinstance(chunk, Mapping) else chunk for chunk in stream]
        out = self.feed_outputs(str(body["status"]), outputs)  # type: ignore[index]
        self.answer_end(body, len(stream))
        return out

    def feed_entries(self, status: str, texts: Iterable[bytes]) -> list[SavedFile | wire.ItemRef]:
        """Apply some entries of an answer as `StreamSplitter` handed them out (`status`: "" until known)."""
        return self.feed_outputs(status, [entry_output(text) for text in texts])

    def feed_outputs(self, status: str, outputs: Iterable[object]) -> list[SavedFile | wire.ItemRef]:
        """Apply the `output`s of some entries of an answer (`status`: "" until known)."""
        self._status(status)
        out: list[SavedFile | wire.ItemRef] = []
        for output in outputs:
            self.entries += 1
            for event in self.assembler.feed(output):
                result = self._on_event(event)
                if result is not None:
                    out.append(result)
        return out

    def answer_end(self, body: object, entries: int) -> None:
        """An answer ended: `body` is what it held besides the `entries` entries already fed."""
        self.polls += 1
        stream = _check_answer(body)
        self._status(str(body["status"]))  # type: ignore[index]
        if self.status in TERMINAL_STATUSES and not stream and not entries:
            self.ended = True

    def answer_broken(self) -> None:
        """An answer broke off after some of its entries were fed: they stand (RunPod drained them)."""
        self.polls += 1

    def _status(self, status: str) -> None:
        if status and status != self.status:
            self.status = status
            self.observer.status(status)

    def _on_event(self, event: wire.Event) -> SavedFile | wire.ItemRef | None:
        outcome, observer = self.outcome, self.observer
        if isinstance(event, wire.ItemComplete):
            saved = SavedFile(event.item, event.id, event.mime, event.size, event.sha256, Path(event.result))
            self._saved(saved)
            return saved
        if isinstance(event, wire.ItemRef):
            return event
        if isinstance(event, wire.Progress):
            observer.item_progress(event.item, event.step, event.steps)
        elif isinstance(event, wire.ItemFailed):
            failure = ItemFailure(event.item, event.id, event.code, event.message)
            outcome.failures.append(failure)
            observer.item_failed(failure)
        elif isinstance(event, wire.ManifestReceived):
            outcome.expected_items = len(event.items)
        elif isinstance(event, wire.Restarted):
            # RunPod re-ran the job (/retry): what the earlier run streamed no longer counts.
            outcome.files.clear()
            outcome.failures.clear()
            observer.problem(
                StreamProblem("restarted", f"RunPod re-ran the job (run {event.run}); starting over")
            )
        elif isinstance(event, wire.Duplicate):
            pass  # counted by the assembler; the SDK retries stream POSTs that failed with a 5xx
        elif isinstance(event, wire.Problem):
            self._problem(StreamProblem(event.code, event.message))
        return None

    def _saved(self, saved: SavedFile) -> None:
        self.outcome.files.append(saved)
        self.observer.item_saved(saved)

    def _problem(self, problem: StreamProblem) -> None:
        self.outcome.problems.append(problem)
        self.observer.problem(problem)

    def save_ref(
        self, ref: wire.ItemRef, chunks: Iterator[bytes] | None, error: str | None = None
    ) -> SavedFile | None:
        """Write the bytes fetched from a `ref` envelope's URL (or record why they could not be fetched)."""
        if chunks is None:
            self._problem(StreamProblem("ref_failed", f"item {ref.item}: could not fetch {ref.url}: {error}"))
            return None
        self.observer.item_started(ref.item, ref.id, ref.mime, ref.size)
        sink = _ObservedSink(
            sinks.FileSink(self.out, ref.item, ref.id, ref.mime, ref.size, fsync=self.fsync),
            ref.item,
            ref.size,
            self.observer,
        )
        offset = 0
        try:
            for chunk in chunks:
                sink.write(offset, chunk)
                offset += len(chunk)
        except BaseException:
            sink.abort()
            raise
        if offset == ref.size:
            ok, path = sink.finish(ref.sha256)
        else:
            sink.abort()
            ok, path = False, None
        if not ok:
            self._problem(
                StreamProblem("bad_sha256", f"item {ref.item} fetched from its URL does not match its sha256")
            )
            return None
        saved = SavedFile(ref.item, ref.id, ref.mime, ref.size, ref.sha256, Path(path))
        self._saved(saved)
        return saved

    def finish(self, error: str | None = None) -> JobOutcome:
        """The outcome once the stream ended; `error` is the job-level error from `/status`, if any."""
        outcome = self.outcome
        outcome.job = outcome.job or self.assembler.job or ""
        outcome.status = self.status
        outcome.error = error
        if self.entries == 0 and self.status == "COMPLETED":
            # `/stream` hands each entry out once: what this job streamed went to someone else.
            sentence = problems.sentence(problems.Code.STREAM_DRAINED, job=outcome.job)
            self._problem(StreamProblem(problems.Code.STREAM_DRAINED, sentence))
        else:
            for problem in self.assembler.finish():
                self._problem(StreamProblem(problem.code, problem.message))
        outcome.result = results.write_result(self.out, self.assembler.result, outcome.files)
        self.observer.finished(outcome)
        return outcome

    def close(self) -> None:
        self.assembler.close()


def _check_answer(body: object) -> list[Any]:
    """The `stream` list of a `/stream` answer, after checking it is one."""
    if not isinstance(body, Mapping) or not isinstance(body.get("status"), str):
        raise TransferError(f"RunPod's /stream answer is not a job status: {json.dumps(body)[:200]}")
    stream = body.get("stream") or []
    if not isinstance(stream, list):
        raise TransferError("RunPod's /stream answer has a 'stream' that is not a list")
    return stream


# ----------------------------------------------------------------------------------------- HTTP, shared


@dataclass(frozen=True)
class _Retry:
    reason: str
    retry_after: float | None = None


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _classify(response: httpx.Response, what: str) -> dict[str, Any] | _Retry:
    """The JSON body of a good answer, a `_Retry` for a transient one; raise for a final one."""
    code = response.status_code
    if code in _RETRY_STATUSES:
        return _Retry(f"{what}: HTTP {code}", retry_after_seconds(response.headers.get("retry-after")))
    if code in (401, 403):
        raise TransferError(f"RunPod rejected the API key (HTTP {code}) for {what}")
    if code == 404:
        raise TransferError(f"{what}: not found (HTTP 404): unknown job or endpoint, or its results expired")
    if code >= 400:
        raise TransferError(f"{what}: HTTP {code}: {response.text[:200]}")
    try:
        body = response.json()
    except ValueError:
        return _Retry(f"{what}: answer is not JSON")
    if not isinstance(body, dict):
        raise TransferError(f"{what}: answer is not a JSON object")
    return body


def _transport_failure(exc: httpx.TransportError, what: str, url: str, reached: bool) -> _Retry:
    if isinstance(exc, httpx.ConnectError) and not reached:
        raise TransferError(f"cannot reach {url}: {exc or type(exc).__name__}") from None
    return _Retry(f"{what}: {type(exc).__name__} {exc}".rstrip())


@dataclass(frozen=True)
class _Entries:
    """Entries of an answer as received (`status`: "" until the answer has shown it)."""

    status: str
    texts: list[bytes]


@dataclass(frozen=True)
class AnswerEnd:
    """How an answer ended: split whole (`splitter`), a non-2xx `response` (read), or an `error`."""

    splitter: StreamSplitter | None = None
    response: httpx.Response | None = None
    error: Exception | None = None


def _settle(
    done: AnswerEnd, delivered: int, drain: StreamDrain, what: str, url: str, reached: bool
) -> _Retry | None:
    """Apply the end of an answer of which `delivered` entries were fed: None, or why to retry it."""
    if done.error is not None:
        if not isinstance(done.error, httpx.TransportError):
            raise done.error
        if delivered:  # what arrived stands (RunPod drained it): poll again, do not retry this one
            drain.answer_broken()
            return None
        return _transport_failure(done.error, what, url, reached)
    if done.response is not None:
        result = _classify(done.response, what)
        if isinstance(result, _Retry):
            return result
        drain.answer_end(result, 0)
        return None
    assert done.splitter is not None
    try:
        body = done.splitter.close()
    except ValueError:
        if delivered:
            drain.answer_broken()
            return None
        return _Retry(f"{what}: answer is not JSON")
    drain.answer_end(body, delivered)
    return None


def _give_up(retry: _Retry, attempts: int) -> TransferError:
    return TransferError(f"giving up after {attempts} failed attempts in a row; last: {retry.reason}")


def _job_error(body: Mapping[str, Any]) -> str | None:
    error = body.get("error")
    if error is None:
        return None
    return error if isinstance(error, str) else str(error)


def _timeout(wait_ms: int) -> httpx.Timeout:
    return httpx.Timeout(10.0, read=wait_ms / 1000 + READ_SLACK_S)


def _check_wait(wait_ms: int) -> None:
    if not 1000 <= wait_ms <= 300_000:
        raise ValueError("wait_ms must be between 1000 and 300000 (RunPod's long-poll range)")


# ------------------------------------------------------------------------------------ the steps of a pull


@dataclass(frozen=True)
class Poll:
    """Open a long-poll `GET url?params` and hand its answer over as it arrives (`PullSteps.entries`,
    then `PullSteps.answer_ended`)."""

    url: str
    headers: dict[str, str]
    params: dict[str, Any]


@dataclass(frozen=True)
class Call:
    """Send `method url` and hand the whole answer, or the transport error, to `PullSteps.answered`."""

    method: str
    url: str
    headers: dict[str, str]


@dataclass(frozen=True)
class Pause:
    """Wait `seconds` (a retry's backoff, or a pause between quick empty answers)."""

    seconds: float


@dataclass(frozen=True)
class Finished:
    """The transfer is over: the last step (of a pull, or of a watch)."""

    outcome: JobOutcome


Step = Poll | Call | Pause | Finished


class PullSteps:
    """All of `pull` except the I/O: which request comes next and what each answer means.

    Contract: call `next()` for the step to take, until it is `Finished`. After a `Poll`, call `entries`
    with each piece of its answer as `StreamSplitter` hands them out (it returns the files they completed
    and any `wire.ItemRef` to fetch with `fetch_ref`), then `answer_ended` exactly once. After a `Call`,
    call `answered` once. After a `Pause`, wait. Call `close` in every case. A final answer (a rejected
    key, an unknown job, an unreachable server, too many failures in a row) raises `TransferError`.
    `pull` and `apull` drive it, on `httpx.Client` and `httpx.AsyncClient`.
    """

    def __init__(
        self,
        job: str,
        *,
        runpod_url: str,
        key: str | None,
        out: str | os.PathLike[str],
        wait_ms: int = DEFAULT_WAIT_MS,
        observer: Observer | None = None,
        retry: RetryPolicy | None = None,
        fsync: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _check_wait(wait_ms)
        base = endpoint_url(runpod_url)
        quoted = urllib.parse.quote(job, safe="")
        self.drain = StreamDrain(job, Path(out), observer, fsync=fsync)
        self.retry = retry or RetryPolicy()
        self._stream = Poll(f"{base}/stream/{quoted}", _headers(key), {"wait": wait_ms})
        self._status = Call("GET", f"{base}/status/{quoted}", _headers(key))
        self._clock = clock
        self._reached = False  # RunPod answered once: a failure to connect is now worth retrying
        self._failures = 0  # failed attempts in a row
        self._delivered = 0  # entries of the open answer
        self._started = 0.0  # when the current poll's first attempt began
        self._pause: float | None = None
        self._status_read = False
        self._error: str | None = None
        self._finished: Finished | None = None

    def next(self) -> Step:
        """The step to take now."""
        if self._pause is not None:
            pause, self._pause = Pause(self._pause), None
            return pause
        if not self.drain.ended:
            if not self._failures:
                self._started = self._clock()
            self._delivered = 0
            return self._stream
        if self.drain.status != "COMPLETED" and not self._status_read:
            return self._status  # a FAILED job's error is on /status, not on the stream
        if self._finished is None:
            self._finished = Finished(self.drain.finish(self._error))
        return self._finished

    def entries(self, status: str, texts: list[bytes]) -> list[SavedFile | wire.ItemRef]:
        """Some entries of the `Poll`'s answer (`status`: "" until the answer has shown it)."""
        self._reached = True
        self._delivered += len(texts)
        return self.drain.feed_entries(status, texts)

    def answer_ended(self, end: AnswerEnd) -> None:
        """How the `Poll`'s answer ended. An error that is no `httpx.TransportError` is raised again."""
        self._reached = self._reached or end.error is None
        retry = _settle(end, self._delivered, self.drain, "GET /stream", self._stream.url, self._reached)
        if retry is not None:
            self._retry_later(retry)
            return
        self._failures = 0
        quick = self._clock() - self._started < _MIN_POLL_S
        if not self.drain.ended and not self._delivered and quick:
            self._pause = _IDLE_PAUSE_S  # a server that does not hold requests open: do not spin

    def answered(self, answer: httpx.Response | httpx.TransportError) -> None:
        """The answer to the `Call` (read whole), or the transport error that took its place."""
        result: dict[str, Any] | _Retry
        if isinstance(answer, httpx.TransportError):
            result = _transport_failure(answer, "GET /status", self._status.url, self._reached)
        else:
            result = _classify(answer, "GET /status")
            self._reached = True
        if isinstance(result, _Retry):
            self._retry_later(result)
            return
        self._failures = 0
        self._status_read = True
        self._error = _job_error(result)

    def close(self) -> None:
        """Abandon unfinished items."""
        self.drain.close()

    def _retry_later(self, retry: _Retry) -> None:
        self._failures += 1
        if self._failures >= self.retry.attempts:
            raise _give_up(retry, self._failures)
        self._pause = self.retry.delay(self._failures, retry.retry_after)
        self.drain.observer.reconnecting(self._failures, self._pause, retry.reason)


def _checked(outcome: JobOutcome, check: bool) -> None:
    if check and not outcome.ok:
        raise JobIncomplete(outcome)


# --------------------------------------------------------------------------------------------- sync


class _SyncAnswer:
    """One `/stream` request received and split in a thread of its own, handed over as `messages`."""

    def __init__(self, client: httpx.Client, poll: Poll) -> None:
        self._queue: queue.Queue[_Entries | AnswerEnd] = queue.Queue(_AHEAD_PIECES)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._receive, args=(client, poll), name="podstream-pull-receive", daemon=True
        )
        self._thread.start()

    def _receive(self, client: httpx.Client, poll: Poll) -> None:
        done: AnswerEnd
        try:
            with client.stream("GET", poll.url, headers=poll.headers, params=poll.params) as response:
                if response.status_code >= 300:
                    response.read()
                    done = AnswerEnd(response=response)
                else:
                    splitter = StreamSplitter()
                    for chunk in response.iter_bytes():
                        texts = splitter.feed(chunk)
                        if texts and not self._put(_Entries(splitter.status, texts)):
                            return  # the consumer went away: leaving the block closes the response
                    done = AnswerEnd(splitter=splitter)
        except Exception as exc:  # the consumer decides what it means (retry, partial answer, fatal)
            done = AnswerEnd(error=exc)
        self._put(done)

    def _put(self, message: _Entries | AnswerEnd) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(message, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def messages(self) -> Iterator[_Entries | AnswerEnd]:
        while True:
            message = self._queue.get()
            yield message
            if isinstance(message, AnswerEnd):
                return

    def close(self) -> None:
        self._stop.set()


def pull(
    job: str,
    *,
    runpod_url: str,
    key: str | None,
    out: str | os.PathLike[str],
    wait_ms: int = DEFAULT_WAIT_MS,
    observer: Observer | None = None,
    retry: RetryPolicy | None = None,
    client: httpx.Client | None = None,
    check: bool = True,
    fsync: bool = True,
) -> Iterator[SavedFile]:
    """Drain job `job` of the endpoint at `runpod_url` (`.../v2/{endpoint_id}`), saving its files in `out`.

    Yields each `SavedFile` as soon as it is complete and verified. Raises `TransferError` when RunPod
    cannot be reached, rejects `key`, does not know the job, or keeps failing past `retry.attempts`; and,
    with `check`, `JobIncomplete` at the end when the job did not complete with every item whole.
    """
    steps = PullSteps(
        job, runpod_url=runpod_url, key=key, out=out, wait_ms=wait_ms, observer=observer, retry=retry,
        fsync=fsync,
    )  # fmt: skip
    own_client = client is None
    http = client or httpx.Client(timeout=_timeout(wait_ms))
    try:
        while not isinstance(step := steps.next(), Finished):
            if isinstance(step, Pause):
                time.sleep(step.seconds)
            elif isinstance(step, Call):
                try:
                    steps.answered(http.request(step.method, step.url, headers=step.headers))
                except httpx.TransportError as exc:
                    steps.answered(exc)
            else:
                answer = _SyncAnswer(http, step)
                try:
                    for message in answer.messages():
                        if isinstance(message, AnswerEnd):
                            steps.answer_ended(message)
                            continue
                        for got in steps.entries(message.status, message.texts):
                            saved = (
                                fetch_ref(http, steps.drain, got) if isinstance(got, wire.ItemRef) else got
                            )
                            if saved is not None:
                                yield saved
                finally:
                    answer.close()
    finally:
        steps.close()
        if own_client:
            http.close()
    _checked(step.outcome, check)


def fetch_ref(http: httpx.Client, drain: StreamDrain, ref: wire.ItemRef) -> SavedFile | None:
    """Fetch the file of a `ref` envelope into `drain` (`StreamDrain.save_ref`): saved, or a problem."""
    try:
        with http.stream("GET", ref.url) as response:
            if response.status_code != 200:
                return drain.save_ref(ref, None, f"HTTP {response.status_code}")
            return drain.save_ref(ref, response.iter_bytes())
    except httpx.HTTPError as exc:
        return drain.save_ref(ref, None, f"{type(exc).__name__} {exc}")


# -------------------------------------------------------------------------------------------- async


class _AsyncAnswer:
    """One `/stream` request received and split in a task of its own, handed over as `messages`."""

    def __init__(self, client: httpx.AsyncClient, poll: Poll) -> None:
        self._queue: asyncio.Queue[_Entries | AnswerEnd] = asyncio.Queue(_AHEAD_PIECES)
        self._task = asyncio.create_task(self._receive(client, poll))

    async def _receive(self, client: httpx.AsyncClient, poll: Poll) -> None:
        done: AnswerEnd
        try:
            async with client.stream("GET", poll.url, headers=poll.headers, params=poll.params) as response:
                if response.status_code >= 300:
                    await response.aread()
                    done = AnswerEnd(response=response)
                else:
                    splitter = StreamSplitter()
                    async for chunk in response.aiter_bytes():
                        texts = splitter.feed(chunk)
                        if texts:
                            await self._queue.put(_Entries(splitter.status, texts))
                    done = AnswerEnd(splitter=splitter)
        except Exception as exc:  # the consumer decides what it means (retry, partial answer, fatal)
            done = AnswerEnd(error=exc)
        await self._queue.put(done)

    async def messages(self) -> AsyncIterator[_Entries | AnswerEnd]:
        while True:
            message = await self._queue.get()
            yield message
            if isinstance(message, AnswerEnd):
                return

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task])  # a cancellation of the caller itself still propagates


async def apull(
    job: str,
    *,
    runpod_url: str,
    key: str | None,
    out: str | os.PathLike[str],
    wait_ms: int = DEFAULT_WAIT_MS,
    observer: Observer | None = None,
    retry: RetryPolicy | None = None,
    client: httpx.AsyncClient | None = None,
    check: bool = True,
    fsync: bool = True,
) -> AsyncIterator[SavedFile]:
    """`pull` for asyncio programs: the same arguments, an async iterator of `SavedFile`."""
    steps = PullSteps(
        job, runpod_url=runpod_url, key=key, out=out, wait_ms=wait_ms, observer=observer, retry=retry,
        fsync=fsync,
    )  # fmt: skip
    own_client = client is None
    http = client or httpx.AsyncClient(timeout=_timeout(wait_ms))
    try:
        while not isinstance(step := steps.next(), Finished):
            if isinstance(step, Pause):
                await asyncio.sleep(step.seconds)
            elif isinstance(step, Call):
                try:
                    steps.answered(await http.request(step.method, step.url, headers=step.headers))
                except httpx.TransportError as exc:
                    steps.answered(exc)
            else:
                answer = _AsyncAnswer(http, step)
                try:
                    async for message in answer.messages():
                        if isinstance(message, AnswerEnd):
                            steps.answer_ended(message)
                            continue
                        # Decoded, hashed and written in a worker thread while the next piece arrives.
                        for got in await asyncio.to_thread(steps.entries, message.status, message.texts):
                            saved = (
                                await afetch_ref(http, steps.drain, got)
                                if isinstance(got, wire.ItemRef)
                                else got
                            )
                            if saved is not None:
                                yield saved
                finally:
                    await answer.close()
    finally:
        steps.close()
        if own_client:
            await http.aclose()
    _checked(step.outcome, check)


async def afetch_ref(http: httpx.AsyncClient, drain: StreamDrain, ref: wire.ItemRef) -> SavedFile | None:
    """`fetch_ref` on an `httpx.AsyncClient`."""
    # Refs are rare (files uploaded out of band); buffering one in memory chunk by chunk keeps this simple.
    try:
        async with http.stream("GET", ref.url) as response:
            if response.status_code != 200:
                return drain.save_ref(ref, None, f"HTTP {response.status_code}")
            chunks = [chunk async for chunk in response.aiter_bytes()]
    except httpx.HTTPError as exc:
        return drain.save_ref(ref, None, f"{type(exc).__name__} {exc}")
    return drain.save_ref(ref, iter(chunks))


# -------------------------------------------------------------------------------------- submit to RunPod


def run_job(
    job_input: Mapping[str, Any],
    *,
    runpod_url: str,
    key: str | None,
    policy: Mapping[str, Any] | None = None,
    client: httpx.Client | None = None,
    retry: RetryPolicy | None = None,
) -> str:
    """Submit a job to RunPod's `POST /run` and return its id (to `pull` it then)."""
    base = endpoint_url(runpod_url)
    payload: dict[str, Any] = {"input": dict(job_input)}
    if policy:
        payload["policy"] = dict(policy)
    own_client = client is None
    http = client or httpx.Client(timeout=httpx.Timeout(30.0))
    policy_ = retry or RetryPolicy(attempts=4)
    failures = 0
    try:
        # POST /run is not idempotent: retrying after a lost answer could start the job twice. Only a 429
        # (the job was certainly not created) is retried.
        while True:
            try:
                response = http.post(f"{base}/run", json=payload, headers=_headers(key))
            except httpx.ConnectError as exc:
                raise TransferError(f"cannot reach {base}: {exc or type(exc).__name__}") from None
            except httpx.TransportError as exc:
                raise TransferError(
                    f"POST /run: {type(exc).__name__} {exc}; the job may or may not exist"
                ) from None
            if response.status_code != 429:
                break
            failures += 1
            if failures >= policy_.attempts:
                raise TransferError(f"POST /run: still rate limited (HTTP 429) after {failures} attempts")
            time.sleep(policy_.delay(failures, retry_after_seconds(response.headers.get("retry-after"))))
        if response.status_code >= 500:
            raise TransferError(f"POST /run: HTTP {response.status_code}; the job may or may not exist")
        body = _classify(response, "POST /run")
    finally:
        if own_client:
            http.close()
    job = body.get("id") if isinstance(body, dict) else None
    if not isinstance(job, str) or not job:
        raise TransferError(f"POST /run answered without a job id: {json.dumps(body)[:200]}")
    return job
