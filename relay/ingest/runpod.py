"""An async client of RunPod's serverless job API, on an injectable `httpx.AsyncClient`.

Only what the relay needs: `run`, `stream` (the long-poll `GET /stream/{id}?wait=ms`), `status`, `cancel`.
Calls that are safe to repeat are retried on 429, 5xx, timeouts and connection errors with exponential
backoff and full jitter, honouring `Retry-After`. `run` is not idempotent, so it is retried only when RunPod
certainly did not act on it (429, or a connection that never opened).

`/stream` drains: RunPod hands each item out once. A response lost to a timeout is lost for good; the
envelope's dense `seq` lets the Assembler report it as a gap.

A `/stream` answer can be large (everything buffered at RunPod, e.g. 100 MB of base64 parts). With
`on_entries`, `stream` hands the answer's entries over while the rest of the body is still arriving:
`StreamSplitter` finds where each entry of the `stream` list ends (brackets, commas and strings only), and
the consumer parses them (`parse_entry`) in its own thread, so network, JSON, base64, sha256 and disk
overlap and the answer is never held whole in memory.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

# One backoff for the whole project (podstream/backoff.py); re-exported: relay.ingest.poller and tests import it here.
from podstream.backoff import Backoff as Backoff
from podstream.backoff import retry_after_seconds

# The sans-I/O splitter lives in podstream/ (the pull uses it too, without the relay's server deps).
from podstream.stream_split import StreamSplitter as StreamSplitter
from podstream.stream_split import parse_entry as parse_entry
from podstream.wire import TERMINAL_STATUSES

TERMINAL: Final = TERMINAL_STATUSES
STATUSES: Final = frozenset({"IN_QUEUE", "IN_PROGRESS"}) | TERMINAL
_RETRY_STATUS: Final = frozenset({429, 500, 502, 503, 504})
#: `/stream` answers above this size are parsed in a worker thread.
_PARSE_IN_THREAD_BYTES: Final = 1 << 20
#: A Retry-After larger than this is not waited for in one go (the caller's loop retries later).
_MAX_RETRY_AFTER_S: Final = 300.0
#: `stream(on_entries=...)` hands entries over in pieces of about this many bytes of JSON.
STREAM_PIECE_BYTES: Final = 4 << 20

log = logging.getLogger("podstream.relay.runpod")

#: `on_entries(status, texts)`: the status read so far ("" until known) and the JSON texts of some entries.
EntriesCallback = Callable[[str, list[bytes]], Awaitable[None]]


class RunPodError(Exception):
    """A RunPod call failed for good. `status_code` is the HTTP status, or None for a network failure."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code

    @property
    def retryable(self) -> bool:
        return self.status_code is None or self.status_code in _RETRY_STATUS


class JobNotFound(RunPodError):
    """RunPod does not know the job (never existed, or past its retention)."""


@dataclass(frozen=True)
class StreamBatch:
    """One `/stream` answer: the job's status and the `output` of every item RunPod handed out."""

    status: str
    outputs: list[object]
    #: Items of the `stream` list without an `output` key (passed on as they are, for the Assembler to reject).
    raw: int = 0
    #: Entries handed to `on_entries` as they arrived (they are not in `outputs`).
    delivered: int = 0

    @property
    def finished(self) -> bool:
        """End of stream: a terminal status AND nothing more handed out."""
        return self.status in TERMINAL and not self.outputs and not self.delivered


class RunPodClient:
    def __init__(
        self,
        base_url: str,
        key: str,
        client: httpx.AsyncClient,
        *,
        retries: int = 5,
        backoff: Backoff | None = None,
        read_timeout_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        observe: Callable[[str, float, int | None], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = client
        self.retries = retries
        self.backoff = backoff or Backoff()
        self.read_timeout_s = read_timeout_s
        self._sleep = sleep
        self._rng = rng
        self.requests = 0  # every HTTP request sent, retries included (for tests and metrics)
        #: Called after every HTTP request: (call, seconds, HTTP status or None for a network failure).
        self.observe = observe

    async def run(
        self, input: Mapping[str, Any], *, policy: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Submit a job: `{"id", "status"}`."""
        body: dict[str, Any] = {"input": dict(input)}
        if policy is not None:
            body["policy"] = dict(policy)
        data = await self._call("POST", "/run", json=body, idempotent=False)
        if not isinstance(data.get("id"), str) or not data["id"]:
            raise RunPodError("RunPod /run answered without a job id", 502)
        return data

    async def stream(
        self, job: str, *, wait_ms: int = 10_000, on_entries: EntriesCallback | None = None
    ) -> StreamBatch:
        """One long-poll of `/stream/{job}`: returns as soon as RunPod has items, or after `wait_ms`.

        With `on_entries`, the entries are not collected in `outputs`: they are handed over in order, in
        pieces, while the answer arrives (parse each with `parse_entry`); `delivered` counts them. If the
        connection breaks after some were handed over, what was handed over stands (RunPod drained it) and
        the batch comes back with status "" (unknown) instead of the request being retried.
        """
        timeout = httpx.Timeout(self.read_timeout_s + wait_ms / 1000, connect=self.read_timeout_s)
        path = f"/stream/{_job_path(job)}"
        params = {"wait": wait_ms}
        if on_entries is not None:
            reader = _EntryReader(on_entries, f"GET {path}")
            data = await self._call("GET", path, params=params, limits=timeout, reader=reader.read)
            if "partial" in data:
                return StreamBatch("", [], delivered=reader.delivered)
            batch = _stream_batch(data)
            return StreamBatch(batch.status, batch.outputs, batch.raw, reader.delivered)
        return _stream_batch(await self._call("GET", path, params=params, limits=timeout))

    async def status(self, job: str) -> dict[str, Any]:
        return await self._call("GET", f"/status/{_job_path(job)}")

    async def cancel(self, job: str) -> dict[str, Any]:
        return await self._call("POST", f"/cancel/{_job_path(job)}")

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        params: Mapping[str, Any] | None = None,
        limits: httpx.Timeout | None = None,
        idempotent: bool = True,
        reader: Callable[[httpx.Response], Awaitable[dict[str, Any]]] | None = None,
    ) -> dict[str, Any]:
        url = self.base_url + path
        attempt = 0
        while True:
            error: RunPodError
            retry_after: float | None = None
            try:
                self.requests += 1
                response, read = await self._send(
                    method, url, reader, json=json, params=params,
                    timeout=limits if limits is not None else httpx.USE_CLIENT_DEFAULT,
                )  # fmt: skip
            except httpx.ConnectError as exc:
                error = RunPodError(f"cannot connect to RunPod ({method} {path}): {exc}")
            except httpx.TimeoutException as exc:
                error = RunPodError(f"RunPod {method} {path} timed out ({type(exc).__name__})")
                if not idempotent:
                    raise error from exc
            except httpx.TransportError as exc:
                error = RunPodError(f"RunPod {method} {path} failed: {exc}")
                if not idempotent:
                    raise error from exc
            else:
                if response.status_code < 300:
                    if read is not None:
                        return read
                    if len(response.content) > _PARSE_IN_THREAD_BYTES:  # keep the event loop responsive
                        return await asyncio.to_thread(_json_object, response, method, path)
                    return _json_object(response, method, path)
                error = _http_error(response, method, path)
                if not idempotent and response.status_code != 429:
                    raise error
                retry_after = retry_after_seconds(response.headers.get("retry-after"))
            if not error.retryable or attempt >= self.retries:
                raise error
            delay = self.backoff.delay(
                attempt, self._rng, retry_after=retry_after, max_retry_after=_MAX_RETRY_AFTER_S
            )
            attempt += 1
            await self._sleep(delay)

    async def _send(
        self,
        method: str,
        url: str,
        reader: Callable[[httpx.Response], Awaitable[dict[str, Any]]] | None,
        **kwargs: Any,
    ) -> tuple[httpx.Response, dict[str, Any] | None]:
        """One request. Without `reader` the body is read whole; with it, a 2xx body is `reader`'s to read
        as it arrives (its result comes back), any other body is read whole (for the error message)."""
        started = time.monotonic()
        call = url[len(self.base_url) :].split("/")[1]
        read: dict[str, Any] | None = None
        try:
            if reader is None:
                response = await self._client.request(method, url, headers=self._headers, **kwargs)
            else:
                request = self._client.build_request(method, url, headers=self._headers, **kwargs)
                response = await self._client.send(request, stream=True)
                try:
                    if response.status_code < 300:
                        read = await reader(response)
                    else:
                        await response.aread()
                finally:
                    await response.aclose()
        except Exception:  # a network failure (a cancellation is not one)
            if self.observe is not None:
                self.observe(call, time.monotonic() - started, None)
            raise
        if self.observe is not None:
            self.observe(call, time.monotonic() - started, response.status_code)
        return response, read


def _job_path(job: str) -> str:
    # Job ids are opaque to us; never let one add path segments or a query.
    return urllib.parse.quote(job, safe="")


def _json_object(response: httpx.Response, method: str, path: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        raise RunPodError(f"RunPod {method} {path} answered non-JSON", 502) from None
    if not isinstance(data, dict):
        raise RunPodError(f"RunPod {method} {path} answered JSON that is not an object", 502)
    return data


def _http_error(response: httpx.Response, method: str, path: str) -> RunPodError:
    detail = response.text[:200].strip()
    message = f"RunPod {method} {path}: HTTP {response.status_code}" + (f": {detail}" if detail else "")
    if response.status_code == 404:
        return JobNotFound(message, 404)
    return RunPodError(message, response.status_code)


def _stream_batch(data: dict[str, Any]) -> StreamBatch:
    items = data.get("stream") or []
    if not isinstance(items, list):
        raise RunPodError("RunPod /stream answered a 'stream' that is not a list", 502)
    outputs: list[object] = []
    raw = 0
    for entry in items:
        if isinstance(entry, dict) and "output" in entry:
            outputs.append(entry["output"])
        else:
            outputs.append(entry)
            raw += 1
    return StreamBatch(str(data.get("status", "")), outputs, raw)


class _EntryReader:
    """Reads a `/stream` body with a `StreamSplitter`, handing entries to `on_entries` in pieces."""

    def __init__(self, on_entries: EntriesCallback, what: str) -> None:
        self.on_entries = on_entries
        self.what = what
        self.delivered = 0

    async def read(self, response: httpx.Response) -> dict[str, Any]:
        splitter = StreamSplitter()
        piece: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_bytes():
                texts = splitter.feed(chunk)
                if texts:
                    piece += texts
                    size += sum(len(t) for t in texts)
                    if size >= STREAM_PIECE_BYTES:
                        await self._hand_over(splitter.status, piece)
                        piece, size = [], 0
        except httpx.TransportError as exc:
            if not self.delivered and not piece:
                raise  # nothing of it was taken: retried like any failed request
            await self._hand_over(splitter.status, piece)
            log.warning("RunPod %s broke off after %d entries: %s", self.what, self.delivered, exc)
            return {"partial": True}
        await self._hand_over(splitter.status, piece)
        try:
            data = splitter.close()
        except ValueError:
            if not self.delivered:
                raise RunPodError(f"RunPod {self.what} answered non-JSON", 502) from None
            log.warning("RunPod %s answered malformed JSON after %d entries", self.what, self.delivered)
            return {"partial": True}
        if not isinstance(data, dict):
            raise RunPodError(f"RunPod {self.what} answered JSON that is not an object", 502)
        return data

    async def _hand_over(self, status: str, piece: list[bytes]) -> None:
        if piece:
            await self.on_entries(status, piece)
            self.delivered += len(piece)
