"""An async client of RunPod's serverless job API, on an injectable `httpx.AsyncClient`.

Only what the relay needs: `run`, `stream` (the long-poll `GET /stream/{id}?wait=ms`), `status`, `cancel`.
Calls that are safe to repeat are retried on 429, 5xx, timeouts and connection errors with exponential
backoff and full jitter, honouring `Retry-After`. `run` is not idempotent, so it is retried only when RunPod
certainly did not act on it (429, or a connection that never opened).

`/stream` drains: RunPod hands each item out once. A response lost to a timeout is lost for good; the
envelope's dense `seq` lets the Assembler report it as a gap.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

TERMINAL: Final = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})
STATUSES: Final = frozenset({"IN_QUEUE", "IN_PROGRESS"}) | TERMINAL
_RETRY_STATUS: Final = frozenset({429, 500, 502, 503, 504})
#: `/stream` answers above this size are parsed in a worker thread.
_PARSE_IN_THREAD_BYTES: Final = 1 << 20
#: A Retry-After larger than this is not waited for in one go (the caller's loop retries later).
_MAX_RETRY_AFTER_S: Final = 300.0


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

    @property
    def finished(self) -> bool:
        """End of stream: a terminal status AND nothing more handed out."""
        return self.status in TERMINAL and not self.outputs


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""

    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        factor: float = rng()
        return factor * min(self.cap_s, math.ldexp(self.base_s, min(attempt, 30)))


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

    async def stream(self, job: str, *, wait_ms: int = 10_000) -> StreamBatch:
        """One long-poll of `/stream/{job}`: returns as soon as RunPod has items, or after `wait_ms`."""
        timeout = httpx.Timeout(self.read_timeout_s + wait_ms / 1000, connect=self.read_timeout_s)
        data = await self._call("GET", f"/stream/{_job_path(job)}", params={"wait": wait_ms}, limits=timeout)
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
    ) -> dict[str, Any]:
        url = self.base_url + path
        attempt = 0
        while True:
            error: RunPodError
            retry_after: float | None = None
            try:
                self.requests += 1
                response = await self._send(
                    method, url, json=json, params=params,
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
                    if len(response.content) > _PARSE_IN_THREAD_BYTES:  # keep the event loop responsive
                        return await asyncio.to_thread(_json_object, response, method, path)
                    return _json_object(response, method, path)
                error = _http_error(response, method, path)
                if not idempotent and response.status_code != 429:
                    raise error
                retry_after = _retry_after(response.headers.get("retry-after"))
            if not error.retryable or attempt >= self.retries:
                raise error
            delay = self.backoff.delay(attempt, self._rng)
            if retry_after is not None:
                delay = max(delay, retry_after)
            attempt += 1
            await self._sleep(delay)

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        started = time.monotonic()
        call = url[len(self.base_url) :].split("/")[1]
        try:
            response = await self._client.request(method, url, headers=self._headers, **kwargs)
        except Exception:  # a network failure (a cancellation is not one)
            if self.observe is not None:
                self.observe(call, time.monotonic() - started, None)
            raise
        if self.observe is not None:
            self.observe(call, time.monotonic() - started, response.status_code)
        return response


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


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)
