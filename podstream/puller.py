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
programs. Both share `StreamDrain`, which does no I/O.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from podstream import results, sinks, wire
from podstream.backoff import MAX_RETRY_AFTER_S, Backoff, retry_after_seconds
from podstream.progress import (
    TERMINAL_STATUSES,
    ItemFailure,
    JobIncomplete,
    JobOutcome,
    Observer,
    SavedFile,
    StreamProblem,
    TransferError,
)

#: How long RunPod may hold one `/stream` request open waiting for an item (RunPod allows 1000..300000).
DEFAULT_WAIT_MS: Final = 30_000
#: Extra read time allowed on top of `wait` before a long-poll counts as timed out.
READ_SLACK_S: Final = 20.0
#: An empty, non-final answer quicker than this means the server does not hold requests: pause a little.
_MIN_POLL_S: Final = 0.1
_IDLE_PAUSE_S: Final = 0.25
_RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
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
    """

    def __init__(self, job: str, out: Path, observer: Observer | None = None, *, fsync: bool = True) -> None:
        self.job = job
        self.out = out
        self.observer = observer or Observer()
        self.fsync = fsync
        self.status = "UNKNOWN"
        self.ended = False
        self.polls = 0
        self.outcome = JobOutcome(job)
        files = sinks.file_sinks(out, fsync=fsync)

        def factory(item: int, id: str, mime: str, size: int) -> wire.ItemSink:
            self.observer.item_started(item, id, mime, size)
            return _ObservedSink(files(item, id, mime, size), item, size, self.observer)

        self.assembler = wire.Assembler(job, factory)

    def feed(self, body: object) -> list[SavedFile | wire.ItemRef]:
        """Apply one `/stream` answer `{"status", "stream": [{"output": envelope}, ...]}`."""
        self.polls += 1
        if not isinstance(body, Mapping) or not isinstance(body.get("status"), str):
            raise TransferError(f"RunPod's /stream answer is not a job status: {json.dumps(body)[:200]}")
        stream = body.get("stream") or []
        if not isinstance(stream, list):
            raise TransferError("RunPod's /stream answer has a 'stream' that is not a list")
        if body["status"] != self.status:
            self.status = body["status"]
            self.observer.status(self.status)
        out: list[SavedFile | wire.ItemRef] = []
        for chunk in stream:
            output = chunk.get("output") if isinstance(chunk, Mapping) else chunk
            for event in self.assembler.feed(output):
                result = self._on_event(event)
                if result is not None:
                    out.append(result)
        if self.status in TERMINAL_STATUSES and not stream:
            self.ended = True
        return out

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
        outcome.status = self.status
        outcome.error = error
        for problem in self.assembler.finish():
            self._problem(StreamProblem(problem.code, problem.message))
        outcome.result = results.write_result(self.out, self.assembler.result, outcome.files)
        self.observer.finished(outcome)
        return outcome

    def close(self) -> None:
        self.assembler.close()


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


# --------------------------------------------------------------------------------------------- sync


class _SyncCaller:
    def __init__(self, client: httpx.Client, key: str | None, retry: RetryPolicy, observer: Observer) -> None:
        self.client, self.key, self.retry, self.observer = client, key, retry, observer
        self.reached = False

    def call(self, method: str, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
        failures = 0
        while True:
            try:
                response = self.client.request(method, url, headers=_headers(self.key), **kwargs)
                result = _classify(response, what)
                self.reached = True
            except httpx.TransportError as exc:
                result = _transport_failure(exc, what, url, self.reached)
            if not isinstance(result, _Retry):
                return result
            failures += 1
            if failures >= self.retry.attempts:
                raise _give_up(result, failures)
            delay = self.retry.delay(failures, result.retry_after)
            self.observer.reconnecting(failures, delay, result.reason)
            time.sleep(delay)


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
    _check_wait(wait_ms)
    base = endpoint_url(runpod_url)
    quoted = urllib.parse.quote(job, safe="")
    drain = StreamDrain(job, Path(out), observer, fsync=fsync)
    own_client = client is None
    http = client or httpx.Client(timeout=_timeout(wait_ms))
    caller = _SyncCaller(http, key, retry or RetryPolicy(), drain.observer)
    try:
        while not drain.ended:
            started = time.monotonic()
            body = caller.call("GET", f"{base}/stream/{quoted}", "GET /stream", params={"wait": wait_ms})
            for result in drain.feed(body):
                if isinstance(result, wire.ItemRef):
                    saved = _fetch_ref_sync(http, drain, result)
                    if saved is not None:
                        yield saved
                else:
                    yield result
            if not drain.ended and not body.get("stream") and time.monotonic() - started < _MIN_POLL_S:
                time.sleep(_IDLE_PAUSE_S)
        error = None
        if drain.status != "COMPLETED":
            error = _job_error(caller.call("GET", f"{base}/status/{quoted}", "GET /status"))
        outcome = drain.finish(error)
    finally:
        drain.close()
        if own_client:
            http.close()
    if check and not outcome.ok:
        raise JobIncomplete(outcome)


def _fetch_ref_sync(http: httpx.Client, drain: StreamDrain, ref: wire.ItemRef) -> SavedFile | None:
    try:
        with http.stream("GET", ref.url) as response:
            if response.status_code != 200:
                return drain.save_ref(ref, None, f"HTTP {response.status_code}")
            return drain.save_ref(ref, response.iter_bytes())
    except httpx.HTTPError as exc:
        return drain.save_ref(ref, None, f"{type(exc).__name__} {exc}")


# -------------------------------------------------------------------------------------------- async


class _AsyncCaller:
    def __init__(
        self, client: httpx.AsyncClient, key: str | None, retry: RetryPolicy, observer: Observer
    ) -> None:
        self.client, self.key, self.retry, self.observer = client, key, retry, observer
        self.reached = False

    async def call(self, method: str, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
        failures = 0
        while True:
            try:
                response = await self.client.request(method, url, headers=_headers(self.key), **kwargs)
                result = _classify(response, what)
                self.reached = True
            except httpx.TransportError as exc:
                result = _transport_failure(exc, what, url, self.reached)
            if not isinstance(result, _Retry):
                return result
            failures += 1
            if failures >= self.retry.attempts:
                raise _give_up(result, failures)
            delay = self.retry.delay(failures, result.retry_after)
            self.observer.reconnecting(failures, delay, result.reason)
            await asyncio.sleep(delay)


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
    _check_wait(wait_ms)
    base = endpoint_url(runpod_url)
    quoted = urllib.parse.quote(job, safe="")
    drain = StreamDrain(job, Path(out), observer, fsync=fsync)
    own_client = client is None
    http = client or httpx.AsyncClient(timeout=_timeout(wait_ms))
    caller = _AsyncCaller(http, key, retry or RetryPolicy(), drain.observer)
    try:
        while not drain.ended:
            started = time.monotonic()
            body = await caller.call(
                "GET", f"{base}/stream/{quoted}", "GET /stream", params={"wait": wait_ms}
            )
            for result in drain.feed(body):
                if isinstance(result, wire.ItemRef):
                    saved = await _fetch_ref_async(http, drain, result)
                    if saved is not None:
                        yield saved
                else:
                    yield result
            if not drain.ended and not body.get("stream") and time.monotonic() - started < _MIN_POLL_S:
                await asyncio.sleep(_IDLE_PAUSE_S)
        error = None
        if drain.status != "COMPLETED":
            error = _job_error(await caller.call("GET", f"{base}/status/{quoted}", "GET /status"))
        outcome = drain.finish(error)
    finally:
        drain.close()
        if own_client:
            await http.aclose()
    if check and not outcome.ok:
        raise JobIncomplete(outcome)


async def _fetch_ref_async(
    http: httpx.AsyncClient, drain: StreamDrain, ref: wire.ItemRef
) -> SavedFile | None:
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
