"""The relay's HTTP API and app factory (Starlette).

    POST   /v1/jobs                     submit to RunPod, start polling  -> 201 {id, status, urls, token}
    POST   /v1/jobs/{id}/attach         poll a job submitted elsewhere    -> 201 (new) / 200 {id, status, urls, token}
    POST   /v1/jobs/{id}/tokens         a subscriber token for the job    -> 201 {token, expires_at, jobs}
    GET    /v1/jobs                     list                              -> {jobs: [...]}
    GET    /v1/jobs/{id}                manifest                          -> {id, status, items, errors, head, ...}
    GET    /v1/jobs/{id}/media/{item}   the file (Range, ETag = "sha256", If-None-Match -> 304)
    GET    /v1/jobs/{id}/events         SSE (`id:` = seq, Last-Event-ID), or ?format=json&after=N&wait=ms
    DELETE /v1/jobs/{id}                cancel on RunPod
    WS     /v1/ws                       see relay.api.ws
    GET    /healthz, /readyz            liveness; readiness (503 while starting, draining or out of disk)
    GET    /metrics                     Prometheus (an API key with the `metrics` scope)
    GET    /openapi.json                this API as an OpenAPI 3.1 document (relay.api.openapi)
    GET    /                            the demo page (relay/static/index.html) when present; /static/...

Who may call what is relay.api.auth's decision: API keys by scope, subscriber tokens for reading their jobs,
signed URLs (`?exp=&sig=`) for media. Errors are JSON: `{"error": {"code": ..., "message": ...}}` with a
fitting status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from podstream.wire import RUN_BODY_CAP
from relay.api import bucket_media, input_refs, inputs, links, openapi, uploads
from relay.api.auth import Authorizer, Denied, OwnOrigin, Principal, parse_origins
from relay.api.body_timeout import BodyTimedOut, BodyTimeout
from relay.api.input_schema import BUILTIN, InputSchema, SchemaConfigError
from relay.api.limits import RateLimited, fd_budget, fd_limit, open_fds
from relay.api.ws import PendingAuth, websocket_endpoint
from relay.config import ConfigError, RelaySettings
from relay.errors import Busy
from relay.ingest import results
from relay.ingest.poller import media_url
from relay.ingest.runpod import JobNotFound, RunPodError
from relay.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from relay.service import NotConfigured, Relay
from relay.storage.errors import BadJobId, JobBroken, MediaGone, MediaRetry, check_job_id
from relay.storage.input_store import owner_of
from relay.storage.job import JobStore, public

if TYPE_CHECKING:
    from relay.storage.cluster.settings import ClusterSettings

log = logging.getLogger("podstream.relay.app")

STATIC_DIR: Final = Path(__file__).parent.parent / "static"  # relay/static: built from client_js/
SSE_KEEPALIVE_S: Final = 15.0
MAX_LONG_POLL_MS: Final = 60_000
#: /readyz fails once this share of RLIMIT_NOFILE is open (new files and RunPod calls would soon fail).
FD_PRESSURE: Final = 0.9


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def _relay(request: Request) -> Relay:
    relay: Relay = request.app.state.relay
    return relay


async def _authorize(request: Request, action: str, job: str | None = None) -> Principal:
    relay = _relay(request)
    try:
        return await relay.auth.http(request.headers, action, job)
    except Denied as exc:
        relay.metrics.denied.labels(exc.code).inc()
        raise


def _job_id(request: Request) -> str:
    try:
        return check_job_id(request.path_params["job"])
    except BadJobId as exc:
        raise ApiError(400, "bad_job_id", str(exc)) from None


def _open(relay: Relay, job: str) -> JobStore | None:
    """The job's store; a job whose files cannot be read (e.g. a corrupt job.json) is `broken_job`, for
    that job alone."""
    try:
        return relay.job(job)
    except BadJobId:
        raise
    except JobBroken as exc:  # the store says why (e.g. "its job.json is not valid JSON (...)")
        raise ApiError(503, "broken_job", str(exc)) from None
    except Exception:
        log.exception("cannot open job %s", job, extra={"job": job})
        raise ApiError(503, "broken_job", f"the relay cannot read the files of job {job} (logged)") from None


def _job(request: Request) -> JobStore:
    job = _job_id(request)
    store = _open(_relay(request), job)
    if store is None:
        raise ApiError(404, "not_found", f"this relay does not know job {job}")
    return store


def _base(request: Request) -> tuple[str, str]:
    """(http base, ws base) of this relay as the client reached it."""
    configured = _relay(request).settings.public_url.rstrip("/")
    base = configured or str(request.base_url).rstrip("/")
    ws = "wss" + base[5:] if base.startswith("https") else "ws" + base[4:]
    return base, ws


def _urls(request: Request, job: str) -> dict[str, str]:
    base, ws = _base(request)
    return {
        "ws": f"{ws}/v1/ws",
        "events": f"{base}/v1/jobs/{job}/events",
        "manifest": f"{base}/v1/jobs/{job}",
    }


def _token_fields(
    relay: Relay, principal: Principal, jobs: list[str], ttl_s: float | None = None
) -> dict[str, Any]:
    token = relay.auth.mint(principal, jobs, ttl_s)
    if token is None:
        return {}
    return {"token": token.token, "token_expires_at": token.expires}


def _retention(relay: Relay, body: dict[str, Any]) -> dict[str, Any]:
    """The job's own `retention_s` from a request body, checked, as job metadata."""
    value = body.get("retention_s")
    if value is None:
        return {}
    limit = relay.settings.max_retention_s
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= limit:
        raise ApiError(400, "bad_retention", f"'retention_s' must be a number of seconds in (0, {limit:g}]")
    return {"retention_s": float(value)}


def _summary(relay: Relay, store: JobStore) -> dict[str, Any]:
    return {
        "id": store.job,
        "status": store.status or "UNKNOWN",
        "head": store.journal.published,
        "items": len(store.items),
        "expected_items": store.meta.get("expected_items"),  # from the input at submit; None if unknown
        "errors": store.errors,
        "finished": store.finished,
        "polling": relay.polling(store.job),
        "source": store.meta.get("source"),
        "created_at": store.meta.get("created_at"),
        "finished_at": store.meta.get("finished_at"),
        "expires_at": relay.expires_at(store),
    }


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_loads(body: bytes | bytearray) -> Any:
    """Strict JSON: no NaN/Infinity (Python's json takes them; RunPod and browsers do not), and nesting too
    deep to decode is bad JSON, not a RecursionError."""
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise ApiError(
            400, "bad_json", "the body is not JSON (NaN, Infinity and deep nesting are refused)"
        ) from None


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, "too_large", f"request bodies are limited to {limit} bytes")
    data = _json_loads(body or b"{}")
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "the body must be a JSON object")
    return data


# ---------------------------------------------------------------------- handlers


async def submit(request: Request) -> Response:
    principal = await _authorize(request, "submit")
    relay = _relay(request)
    try:
        relay.submits.take(principal.name)
    except RateLimited as exc:
        relay.metrics.rate_limited.labels("submit").inc()
        retry = str(int(exc.retry_after))
        raise ApiError(429, "rate_limited", str(exc), headers={"retry-after": retry}) from None
    body = await _json_body(request, relay.settings.max_submit_bytes)
    input_: Any = body.get("input")
    policy = body.get("policy")
    if not isinstance(input_, dict):
        raise ApiError(400, "bad_input", "the body needs an 'input' object")
    if policy is not None and not isinstance(policy, dict):
        raise ApiError(400, "bad_input", "'policy' must be an object")
    schema: InputSchema = request.app.state.input_schema
    problem = schema.problem(input_)
    if problem is not None:  # refused here: nothing reaches RunPod, no GPU is paid for a typo
        raise ApiError(400, "bad_input", f"the job input is not valid: {problem}")
    retention = _retention(relay, body)
    base, _ws = _base(request)
    try:  # images by reference: staged inputs, and inline images too large for RunPod's /run body
        input_, held = await asyncio.to_thread(
            input_refs.rewrite, relay, owner_of(principal.name), input_, base,
            builtin=schema.setting in ("", BUILTIN),
        )  # fmt: skip
    except inputs.InputRefused as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    size = len(json.dumps({"input": input_, "policy": policy} if policy else {"input": input_}).encode())
    if size > RUN_BODY_CAP:
        raise ApiError(
            413, "input_too_large",
            f"the job input RunPod would get is {size} bytes, over its {RUN_BODY_CAP}-byte /run cap: stage "
            "images with PUT /v1/inputs and send their refs (inline images are staged only when the relay "
            "checks the built-in input schema)",
        )  # fmt: skip
    if held:
        retention["inputs"] = held
    store = await relay.submit(input_, policy, **retention)
    answer = {"id": store.job, "status": store.status or "IN_QUEUE", "urls": _urls(request, store.job)}
    answer.update(_token_fields(relay, principal, [store.job]))
    return JSONResponse(answer, status_code=201)


async def attach(request: Request) -> Response:
    job = _job_id(request)
    principal = await _authorize(request, "attach", job)
    relay = _relay(request)
    body = await _json_body(request, relay.settings.max_submit_bytes)
    store, created = await relay.attach(job, **_retention(relay, body))
    answer = {"id": job, "status": store.status or "UNKNOWN", "urls": _urls(request, job)}
    answer.update(_token_fields(relay, principal, [job]))
    return JSONResponse(answer, status_code=201 if created else 200)


async def tokens(request: Request) -> Response:
    """`POST /v1/jobs/{id}/tokens` `{"ttl_s"?, "jobs"?: [more ids]}`: a subscriber token (API key, jobs:read)."""
    job = _job_id(request)
    principal = await _authorize(request, "token", job)
    relay = _relay(request)
    body = await _json_body(request, 64 * 1024)
    ttl = body.get("ttl_s")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0):
        raise ApiError(400, "bad_ttl", "'ttl_s' must be a positive number of seconds")
    more = body.get("jobs", [])
    if not isinstance(more, list) or len(more) > relay.settings.max_subscriptions:
        raise ApiError(
            400, "bad_jobs", f"'jobs' must be a list of at most {relay.settings.max_subscriptions} ids"
        )
    try:
        jobs = sorted({job, *(check_job_id(j) for j in more)})
    except BadJobId as exc:
        raise ApiError(400, "bad_job_id", str(exc)) from None
    token = relay.auth.mint(principal, jobs, None if ttl is None else float(ttl))
    if token is None:
        raise ApiError(404, "no_auth", "this relay runs without auth (--insecure): subscribe without one")
    return JSONResponse({"token": token.token, "expires_at": token.expires, "jobs": jobs}, status_code=201)


async def list_jobs(request: Request) -> Response:
    await _authorize(request, "list")
    relay = _relay(request)
    jobs: list[dict[str, Any]] = []
    for job in relay.job_ids():
        try:
            store = _open(relay, job)
        except ApiError as exc:
            jobs.append({"id": job, "status": "BROKEN", "error": {"code": exc.code, "message": exc.message}})
            continue
        if store is not None:
            jobs.append(_summary(relay, store))
    return JSONResponse({"jobs": jobs})


async def manifest(request: Request) -> Response:
    await _authorize(request, "read", _job_id(request))  # before saying whether the job exists
    store = _job(request)
    relay = _relay(request)
    base, _ws = _base(request)
    items = []
    for item in sorted(store.items):
        record = public(store.items[item])
        url = record["url"]
        entry = {k: record[k] for k in ("item", "id", "mime", "size", "sha256")}
        entry["url"] = base + relay.auth.sign(url) if url.startswith("/") else url
        if "delivery" in record:
            entry["delivery"] = record["delivery"]
        items.append(entry)
    errors = [{k: r.get(k) for k in ("seq", "item", "code", "message")} for r in _error_records(store)]
    body = _summary(relay, store)
    body.update(items=items, errors=errors, error_count=store.errors, urls=_urls(request, store.job))
    body["result"] = results.with_urls(store, {e["item"]: e["url"] for e in items})
    return JSONResponse(body)


def _error_records(store: JobStore) -> list[dict[str, Any]]:
    """The current run's `error` records (read from the journal: they are few)."""
    out: list[dict[str, Any]] = []
    seq = 0
    while True:
        records = store.journal.read(seq, 4096)
        if not records:
            return out
        for record in records:
            if record["k"] == "error":
                if record.get("code") == "restarted":
                    out.clear()
                elif record.get("code") != "duplicate":
                    out.append(record)
        seq = records[-1]["seq"]


async def media(request: Request) -> Response:
    job = _job_id(request)
    relay = _relay(request)
    raw_item = request.path_params["item"]
    if not _is_ascii_int(raw_item) or len(raw_item) > 9:
        raise ApiError(400, "bad_item", "the item is an integer index")
    item = int(raw_item)
    query = request.query_params
    try:
        signed = relay.auth.check_signature(media_url(job, item), query.get("exp"), query.get("sig"))
    except Denied as exc:
        relay.metrics.denied.labels(exc.code).inc()
        raise
    if not signed:
        await _authorize(request, "read", job)
    store = _job(request)
    record = store.items.get(item)
    if record is None:
        raise ApiError(404, "not_found", f"job {store.job} has no item {item} (yet)")
    path = store.media_path(record)
    if path is None and store.object_key(record) is None:
        raise ApiError(404, "not_here", f"item {item} was uploaded elsewhere: {record['url']}")
    etag = f'"{record["sha256"]}"'
    headers = {"etag": etag, "cache-control": "public, max-age=31536000, immutable"}
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None and (if_none_match.strip() == "*" or etag in _etags(if_none_match)):
        return Response(status_code=304, headers=headers)
    try:
        source = await asyncio.to_thread(store.check_media, record)  # missing/damaged: gone; EMFILE: retry
        if path is None:  # cluster mode: the item is an object in the bucket
            return bucket_media.response(request, relay, store, record, source, headers)
        stat = await asyncio.to_thread(path.stat)
        wanted = bucket_media.ranges(bucket_media.range_header(request, etag), stat.st_size)
    except bucket_media.Unsatisfiable as exc:
        raise ApiError(
            416, "range_not_satisfiable", str(exc), headers={"content-range": f"bytes */{exc.size}"}
        ) from None
    except MediaRetry as exc:
        raise ApiError(503, "try_again", str(exc), headers={"retry-after": "1"}) from None
    except (MediaGone, OSError) as exc:
        message = (
            str(exc) if isinstance(exc, MediaGone) else f"the file of item {item} is no longer available"
        )
        raise ApiError(410, "gone", message) from None
    return _ReadingFileResponse(
        store, relay, wanted, path, headers=headers, media_type=record["mime"] or "application/octet-stream",
        stat_result=stat, filename=path.name, content_disposition_type="inline",
    )  # fmt: skip


class _ReadingFileResponse(FileResponse):
    """A file response that holds the job as read while it streams (a sweep leaves it alone meanwhile).

    It serves the ranges the route read out of the request (`bucket_media.ranges`), not the raw Range: so
    a Range the route ignores is not answered 400 by Starlette, and both backends read Range alike."""

    def __init__(
        self, store: JobStore, relay: Relay, ranges: list[tuple[int, int]] | None, *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.store = store
        self.relay = relay
        self.ranges = ranges

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"range", b"if-range")]
        if self.ranges is not None:
            spec = ",".join(f"{first}-{last}" for first, last in self.ranges)
            headers.append((b"range", f"bytes={spec}".encode("ascii")))
        scope = {**scope, "headers": headers}
        sent = 0

        async def counting(message: Message) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        with self.store.reading():
            try:
                await super().__call__(scope, receive, counting)
            finally:
                self.relay.metrics.bytes_out.labels("http").inc(sent)


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",")}


async def events(request: Request) -> Response:
    await _authorize(request, "read", _job_id(request))
    store = _job(request)
    relay = _relay(request)
    after = _int_param(request, "after", 0)
    last_event_id = request.headers.get("last-event-id")
    if last_event_id:
        if not _is_ascii_int(last_event_id) or len(last_event_id) > 18:
            raise ApiError(400, "bad_last_event_id", "Last-Event-ID must be a seq")
        after = int(last_event_id)
    if after < 0:
        raise ApiError(400, "bad_after", "'after' must be >= 0")
    if request.query_params.get("format") == "json":
        wait_ms = min(_int_param(request, "wait", 0), MAX_LONG_POLL_MS)
        deadline = time.monotonic() + wait_ms / 1000
        while (
            (left := deadline - time.monotonic()) > 0 and store.journal.published <= after and not store.done
        ):
            await relay.hub.wait_beyond(store, after, left)  # a wake-up without news waits on
        records = store.journal.read(after, relay.settings.max_events_per_response)
        reached_end = records[-1]["k"] == "done" if records else after >= store.journal.published
        body = {
            "events": [relay.public(r) for r in records],
            "head": store.journal.published,
            "status": store.status or "UNKNOWN",
            "done": store.finished and reached_end,
        }
        return JSONResponse(body)
    return StreamingResponse(
        _sse(relay, store, after), media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )  # fmt: skip


async def _sse(relay: Relay, store: JobStore, after: int) -> AsyncIterator[bytes]:
    yield b"retry: 1000\n\n"
    cursor = relay.hub.records(store, after)
    next_record = asyncio.ensure_future(anext(cursor))
    relay.sse_streams += 1
    try:
        while True:
            done, _pending = await asyncio.wait([next_record], timeout=SSE_KEEPALIVE_S)
            if not done:
                yield b": keepalive\n\n"
                continue
            try:
                record = next_record.result()
            except StopAsyncIteration:
                return
            data = json.dumps(relay.public(record), separators=(",", ":"))
            chunk = f"id: {record['seq']}\nevent: {record['k']}\ndata: {data}\n\n".encode()
            relay.metrics.bytes_out.labels("sse").inc(len(chunk))
            yield chunk
            next_record = asyncio.ensure_future(anext(cursor))
    finally:
        relay.sse_streams -= 1
        next_record.cancel()
        with contextlib.suppress(BaseException):
            await next_record
        await cursor.aclose()


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    digits = raw[1:] if raw.startswith("-") else raw
    if not _is_ascii_int(digits) or len(digits) > 18:
        raise ApiError(400, f"bad_{name}", f"'{name}' must be an integer")
    return int(raw)


def _is_ascii_int(text: str) -> bool:
    """ASCII digits only: `str.isdigit` is true for '²' (int() then fails) and `int()` takes an Arabic-Indic one as 1."""
    return text.isascii() and text.isdigit()


async def cancel(request: Request) -> Response:
    job = _job_id(request)
    await _authorize(request, "cancel", job)
    answer = await _relay(request).cancel(job)
    return JSONResponse({"id": job, "status": answer.get("status", "UNKNOWN")})


async def healthz(request: Request) -> Response:
    """Liveness: the process answers (its event loop is not stuck)."""
    relay = _relay(request)
    return JSONResponse(
        {"ok": True, "polling": len(relay.pollers), "connections": len(relay.connections),
         "runpod": bool(relay.runpod), "uptime_s": round(time.time() - relay.started_at, 3)}
    )  # fmt: skip


async def readyz(request: Request) -> Response:
    """Readiness: jobs reopened, not shutting down, the data directory writable and not full."""
    relay = _relay(request)
    problems = []
    if not relay.ready:
        problems.append("starting or shutting down")
    if not os.access(relay.store.root, os.W_OK):
        problems.append("the data directory is not writable")
    cluster_problem = relay.not_ready()
    if cluster_problem is not None:  # Redis or the bucket cannot be reached: nothing could be stored
        problems.append(cluster_problem)
    limit = relay.quota.limit
    if limit > 0 and relay.quota.used >= limit:
        problems.append("the disk quota is full")
    fds, fd_max = open_fds(), fd_limit()
    if fds is not None and fds >= FD_PRESSURE * fd_max:
        problems.append(f"file descriptors nearly exhausted ({fds} of {fd_max} open)")
    body = {
        "ready": not problems, "problems": problems, "disk_usage_bytes": relay.quota.used,
        "open_fds": fds, "fd_limit": fd_max,
    }  # fmt: skip
    return JSONResponse(body, status_code=503 if problems else 200)


async def metrics(request: Request) -> Response:
    await _authorize(request, "metrics")
    relay = _relay(request)
    return Response(await asyncio.to_thread(relay.metrics.render), media_type=METRICS_CONTENT_TYPE)


async def openapi_json(request: Request) -> Response:
    """`GET /openapi.json`: the HTTP API (relay.api.openapi), open like /healthz."""
    return JSONResponse(openapi.document())


async def index(request: Request) -> Response:
    page = STATIC_DIR / "index.html"
    if not page.is_file():
        return JSONResponse({"service": "podstream relay", "docs": "docs/relay.md", "health": "/healthz"})
    return FileResponse(page, media_type="text/html")


# ---------------------------------------------------------------------- errors


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    response = _error(exc.status, exc.code, exc.message)
    response.headers.update(exc.headers or {})
    return response


async def _runpod_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, JobNotFound):
        return _error(404, "runpod_not_found", str(exc))
    assert isinstance(exc, RunPodError)
    status = 504 if exc.status_code is None else 502
    if exc.status_code in (401, 403):
        status = 502
    return _error(status, "runpod_error", str(exc))


async def _not_configured(request: Request, exc: Exception) -> Response:
    return _error(503, "no_runpod", str(exc))


async def _denied(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Denied)
    headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
    response = _error(exc.status, exc.code, str(exc))
    response.headers.update(headers or {})
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    """Last resort: a bug. Logged with its traceback (uvicorn logs it too); the client gets a JSON 500."""
    log.error("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return _error(500, "internal", "internal error (logged by the relay)")


async def _disconnected(request: Request, exc: Exception) -> Response:
    """The client went away before its request body was complete: nothing to answer (the response goes
    nowhere), nothing to log but a line at debug level."""
    log.debug("%s %s: the client disconnected before its body was complete", request.method, request.url.path)
    return _error(400, "disconnected", "the request ended before its body did")


async def _body_timeout(request: Request, exc: Exception) -> Response:
    response = _error(408, "body_timeout", str(exc))
    response.headers["connection"] = "close"  # the rest of the body may still come: the connection is done
    return response


async def _busy(request: Request, exc: Exception) -> Response:
    return _error(503, "busy", str(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    from starlette.exceptions import HTTPException

    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(exc.status_code, code, str(exc.detail))


def create_app(
    settings: RelaySettings,
    *,
    http_client: httpx.AsyncClient | None = None,
    authorizer: Authorizer | None = None,
    cluster: ClusterSettings | None = None,
) -> Starlette:
    """The relay app. `http_client` (for RunPod calls) and `authorizer` are injectable for tests and embedding;
    `cluster` (both URLs set) runs it as a replica on Redis and a bucket (docs/cluster.md)."""
    relay = Relay(settings, http_client=http_client, authorizer=authorizer, cluster=cluster)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await relay.start()
        try:
            yield
        finally:
            await relay.stop()

    routes: list[Any] = [
        Route("/", index),
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/openapi.json", openapi_json),
        Route("/v1/jobs", submit, methods=["POST"]),
        Route("/v1/jobs", list_jobs, methods=["GET"]),
        Route("/v1/jobs/{job}", manifest, methods=["GET"]),
        Route("/v1/jobs/{job}", cancel, methods=["DELETE"]),
        Route("/v1/jobs/{job}/attach", attach, methods=["POST"]),
        Route("/v1/jobs/{job}/tokens", tokens, methods=["POST"]),
        Route("/v1/jobs/{job}/events", events, methods=["GET"]),
        Route("/v1/jobs/{job}/media/{item}", media, methods=["GET", "HEAD"]),
        *uploads.routes(),
        *inputs.routes(),
        *links.routes(),
        WebSocketRoute("/v1/ws", websocket_endpoint),
    ]
    if STATIC_DIR.is_dir():
        routes.append(Mount("/static", app=StaticFiles(directory=STATIC_DIR, check_dir=False), name="static"))
    from starlette.exceptions import HTTPException

    cors = parse_origins(settings.cors_origins)
    middleware = [Middleware(OwnOrigin), Middleware(BodyTimeout, timeout_s=settings.body_timeout_s)]
    if cors:
        middleware.append(
            Middleware(
                CORSMiddleware, allow_origins=sorted(cors), allow_methods=["GET", "HEAD", "POST", "PUT", "DELETE"],
                allow_headers=["authorization", "content-type", "last-event-id", "range", "if-none-match",
                               "x-content-sha256", "x-podstream-sha256"],
                expose_headers=["etag", "content-range", "retry-after"], max_age=600,
            )
        )  # fmt: skip
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=middleware,
        exception_handlers={
            ApiError: _api_error, RunPodError: _runpod_error, NotConfigured: _not_configured,
            Busy: _busy, HTTPException: _http_error, Denied: _denied,
            ClientDisconnect: _disconnected, BodyTimedOut: _body_timeout, Exception: _unexpected,
        },
    )  # fmt: skip
    app.state.relay = relay
    app.state.input_schema = InputSchema(settings.input_schema)
    try:
        app.state.input_schema.check_config()  # a bad schema file stops the relay, not every submit
    except SchemaConfigError as exc:
        raise ConfigError(f"PODSTREAM_INPUT_SCHEMA: {exc}") from None
    # Websockets waiting for auth never hold more than half the connections RLIMIT_NOFILE leaves room for.
    budget = fd_budget(fd_limit(), settings.fd_reserve)
    app.state.pending_auth = PendingAuth(min(settings.max_pending_auth, max(1, budget // 2)))
    return app
