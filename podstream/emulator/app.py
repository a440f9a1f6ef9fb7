"""The emulator's HTTP face: RunPod's client API and its worker API, as a Starlette app.

Client side, under `/v2/{endpoint_id}/`: run, runsync, stream, status, status-sync, cancel, retry,
purge-queue, health.
Worker side, at the URLs the runpod SDK builds from its `RUNPOD_WEBHOOK_*` variables:
`GET job-take/{worker}` and `GET job-take-batch/{worker}?batch_size=N` (long-polls; 204 when nothing came),
`POST job-stream/{worker}/{job}` and `POST job-done/{worker}/{job}` (body: JSON text, sent as
`application/x-www-form-urlencoded`), `GET job-stop/{worker}` (long-poll, `{"jobsToStop": [...]}`) and
`GET ping/{worker}?job_id=a,b&runpod_version=...` (or `status=unhealthy&check=...&reason=...`).
Emulator-only, under `/_emulator/`: `GET stats`, `GET jobs`, `POST faults`, `POST expire/{job}`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from podstream.emulator.config import EmulatorConfig
from podstream.emulator.faults import Faults
from podstream.emulator.jobs import Job, JobStatus, JobTable, encode_json
from podstream.emulator.ratelimit import RateLimiter
from podstream.emulator.stats import RequestStats

Handler = Callable[[Request, bytes], Awaitable[Response]]

CLIENT_ROUTES = (
    "run", "runsync", "stream", "status", "status-sync", "cancel", "retry", "purge-queue", "health",
)  # fmt: skip
WORKER_ROUTES = ("job-take", "job-take-batch", "job-stream", "job-done", "job-stop", "ping")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _stream_answer(job_id: str, status: str, entries: list[bytes]) -> StreamingResponse:
    """The `GET /stream` answer, `{"id":..,"status":..,"stream":[entries]}` as `JSONResponse` would write it,
    sent entry by entry from the encoded entries: a backlog of hundreds of MB is never joined (and copied
    again into the transport's buffer) in one piece."""
    opening = encode_json({"id": job_id, "status": status})[:-1] + b',"stream":['
    length = len(opening) + sum(map(len, entries)) + max(len(entries) - 1, 0) + 2

    async def pieces() -> AsyncIterator[bytes]:
        yield opening
        for n, entry in enumerate(entries):
            if n:
                yield b","
            yield entry
        yield b"]}"

    headers = {"content-length": str(length)}
    return StreamingResponse(pieces(), media_type="application/json", headers=headers)


@dataclass
class _Body:
    data: bytes
    size: int
    over: bool


async def _read_body(request: Request, cap: int | None) -> _Body:
    """Read the whole body, keeping at most `cap` bytes in memory but counting every byte."""
    chunks: list[bytes] = []
    size = 0
    over = False
    async for chunk in request.stream():
        size += len(chunk)
        if cap is not None and size > cap:
            over = True
            chunks.clear()
        elif not over:
            chunks.append(chunk)
    return _Body(b"".join(chunks), size, over)


class EmulatorApp:
    """Owns the job table and answers HTTP. `app` is the ASGI application."""

    def __init__(
        self,
        config: EmulatorConfig,
        faults: Faults,
        stats: RequestStats,
        *,
        kill_worker: Callable[[str], bool] = lambda worker_id: False,
    ) -> None:
        self.config = config
        self.faults = faults
        self.stats = stats
        self.table = JobTable(config, faults, on_terminal=self._on_terminal)
        self._limiter = RateLimiter(config.rate_limits)
        self._kill_worker = kill_worker
        self._background: set[asyncio.Task[None]] = set()
        self._http: httpx.AsyncClient | None = None
        self._ticker: asyncio.Task[None] | None = None
        prefix = "/v2/{endpoint_id}"
        get, post, both = ["GET"], ["POST"], ["GET", "POST"]
        routes = [
            self._route(f"{prefix}/run", "run", post, self._run, cap=config.max_run_bytes),
            self._route(f"{prefix}/runsync", "runsync", post, self._runsync, cap=config.max_runsync_bytes),
            self._route(f"{prefix}/stream/{{job_id}}", "stream", both, self._stream),
            self._route(f"{prefix}/status/{{job_id}}", "status", both, self._status),
            self._route(f"{prefix}/status-sync/{{job_id}}", "status-sync", both, self._status_sync),
            self._route(f"{prefix}/cancel/{{job_id}}", "cancel", post, self._cancel),
            self._route(f"{prefix}/retry/{{job_id}}", "retry", post, self._retry),
            self._route(f"{prefix}/purge-queue", "purge-queue", post, self._purge_queue),
            self._route(f"{prefix}/health", "health", get, self._health),
            self._route(f"{prefix}/job-take/{{worker_id}}", "job-take", get, self._job_take, worker=True),
            self._route(
                f"{prefix}/job-take-batch/{{worker_id}}", "job-take-batch", get, self._job_take, worker=True
            ),
            self._route(
                f"{prefix}/job-stream/{{worker_id}}/{{job_id}}",
                "job-stream",
                post,
                self._job_stream,
                worker=True,
                cap=config.max_stream_item_bytes,
            ),
            self._route(
                f"{prefix}/job-done/{{worker_id}}/{{job_id}}",
                "job-done",
                post,
                self._job_done,
                worker=True,
                cap=config.max_job_done_bytes,
            ),
            self._route(f"{prefix}/job-stop/{{worker_id}}", "job-stop", get, self._job_stop, worker=True),
            self._route(f"{prefix}/ping/{{worker_id}}", "ping", get, self._ping, worker=True),
            Route("/_emulator/stats", self._emulator_stats, methods=get),
            Route("/_emulator/jobs", self._emulator_jobs, methods=get),
            Route("/_emulator/faults", self._emulator_faults, methods=post),
            Route("/_emulator/expire/{job_id}", self._emulator_expire, methods=post),
        ]
        self.app = Starlette(routes=routes)

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the deadline ticker (call on the server's loop)."""
        self._http = httpx.AsyncClient(timeout=self.config.webhook_timeout_s)
        self._ticker = asyncio.create_task(self._tick_forever())

    def release(self) -> None:
        """Answer every pending long-poll now (204 / current state): the server is about to stop."""
        self.table.close()

    async def stop(self) -> None:
        self.table.close()
        tasks = [t for t in (self._ticker, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_s)
            self.table.tick()

    # ---- plumbing ----------------------------------------------------------------------------------

    def _route(
        self,
        path: str,
        name: str,
        methods: list[str],
        handler: Handler,
        *,
        worker: bool = False,
        cap: int | None = None,
    ) -> Route:
        key = self.config.effective_worker_key if worker else self.config.api_key
        oversize_status = 400 if worker else self.config.oversize_status

        async def endpoint(request: Request) -> Response:
            try:
                body = await _read_body(request, cap)
            except ClientDisconnect:
                self.stats.record(name, 499, 0, 0)
                return Response(status_code=499)
            if request.path_params["endpoint_id"] != self.config.endpoint_id:
                response: Response = _error(404, "endpoint not found")
            elif key is not None and request.headers.get("authorization") not in (key, f"Bearer {key}"):
                response = _error(401, "Unauthorized")
            elif body.over:
                response = _error(
                    oversize_status, f"request body of {body.size} bytes is over the {cap} byte limit"
                )
                self.stats.count(f"{name}_oversize")
            elif not self._limiter.acquire(name):
                response = _error(429, "rate limit exceeded, retry with backoff")
            else:
                self.stats.enter(name)
                try:
                    response = await handler(request, body.data)
                finally:
                    self.stats.leave(name)
                    self._limiter.release(name)
            # Every response here declares its length (a streamed `/stream` answer too; none for a 204).
            sent = int(response.headers.get("content-length", 0))
            self.stats.record(name, response.status_code, body.size, sent)
            return response

        return Route(path, endpoint, methods=methods, name=name)

    def _job_or_404(self, request: Request) -> Job | JSONResponse:
        job = self.table.get(request.path_params["job_id"])
        if job is None:
            return _error(404, "request does not exist")
        return job

    def _on_terminal(self, job: Job) -> None:
        if job.webhook and self._http is not None:
            task = asyncio.get_running_loop().create_task(self._send_webhook(job.webhook, job.status_body()))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _send_webhook(self, url: str, body: dict[str, Any]) -> None:
        assert self._http is not None
        for attempt in range(self.config.webhook_attempts):
            if attempt:
                await asyncio.sleep(self.config.webhook_retry_delay_s)
            try:
                response = await self._http.post(url, json=body)
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                self.stats.count("webhooks_sent")
                return
        self.stats.count("webhooks_failed")

    # ---- client side -------------------------------------------------------------------------------

    def _parse_run(self, body: bytes) -> dict[str, Any] | JSONResponse:
        try:
            request = json.loads(body)
        except ValueError:
            return _error(400, "request body is not valid JSON")
        if not isinstance(request, dict) or "input" not in request:
            return _error(400, 'request body must be a JSON object with an "input" field')
        policy = request.get("policy") or {}
        if not isinstance(policy, dict):
            return _error(400, '"policy" must be an object')
        for name in ("executionTimeout", "ttl"):
            value = policy.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                return _error(400, f'"policy.{name}" must be a positive integer of milliseconds')
        ttl = policy.get("ttl")
        if ttl is not None and not self.config.ttl_min_ms <= ttl <= self.config.ttl_max_ms:
            return _error(
                400, f'"policy.ttl" must be between {self.config.ttl_min_ms} and {self.config.ttl_max_ms} ms'
            )
        webhook = request.get("webhook")
        if webhook is not None and not isinstance(webhook, str):
            return _error(400, '"webhook" must be a URL string')
        return request

    def _submit(self, request: dict[str, Any], *, sync: bool) -> Job:
        policy = request.get("policy") or {}
        return self.table.submit(
            request["input"],
            webhook=request.get("webhook"),
            execution_timeout_ms=policy.get("executionTimeout"),
            ttl_ms=policy.get("ttl"),
            sync=sync,
        )

    async def _run(self, request: Request, body: bytes) -> Response:
        parsed = self._parse_run(body)
        if isinstance(parsed, JSONResponse):
            return parsed
        job = self._submit(parsed, sync=False)
        return JSONResponse({"id": job.id, "status": job.status.value})

    async def _runsync(self, request: Request, body: bytes) -> Response:
        parsed = self._parse_run(body)
        if isinstance(parsed, JSONResponse):
            return parsed
        wait_ms = self._wait_ms(
            request, self.config.runsync_wait_default_ms, 1, self.config.runsync_wait_max_ms
        )
        if isinstance(wait_ms, JSONResponse):
            return wait_ms
        job = self._submit(parsed, sync=True)
        return await self._until_terminal(job, wait_ms)

    async def _until_terminal(self, job: Job, wait_ms: int) -> Response:
        """The status body once `job` ends, or `{"id", "status"}` when `wait_ms` runs out first."""
        deadline = time.monotonic() + wait_ms / 1000
        while not job.status.terminal and not self.table.closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await job.changed.wait(remaining)
        if self.table.get(job.id) is not job:
            return _error(404, "request does not exist")
        if not job.status.terminal:
            return JSONResponse({"id": job.id, "status": job.status.value})
        return JSONResponse(job.status_body())

    def _wait_ms(self, request: Request, default: int, low: int, high: int) -> int | JSONResponse:
        raw = request.query_params.get("wait")
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            return _error(400, '"wait" must be an integer number of milliseconds')
        return min(max(value, low), high)

    async def _stream(self, request: Request, body: bytes) -> Response:
        scripted = self.faults.take_stream_response()
        if scripted != 200:
            return _error(scripted, "injected fault")
        found = self._job_or_404(request)
        if isinstance(found, JSONResponse):
            return found
        job = found
        config = self.config
        wait_ms = self._wait_ms(
            request, config.stream_wait_default_ms, config.stream_wait_min_ms, config.stream_wait_max_ms
        )
        if isinstance(wait_ms, JSONResponse):
            return wait_ms
        deadline = time.monotonic() + wait_ms / 1000
        while not job.stream and not job.status.terminal and not self.table.closing:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await job.changed.wait(remaining)
        if self.table.get(job.id) is not job:
            return _error(404, "request does not exist")
        if self.faults.stream_delay_s > 0:
            await asyncio.sleep(self.faults.stream_delay_s)
        status = job.status.value  # read before draining: items and a terminal status can come together
        items = self.table.drain(job)
        return _stream_answer(job.id, status, items)

    async def _status(self, request: Request, body: bytes) -> Response:
        scripted = self.faults.take_status_response()
        if scripted != 200:
            return _error(scripted, "injected fault")
        found = self._job_or_404(request)
        if isinstance(found, JSONResponse):
            return found
        return JSONResponse(found.status_body())

    async def _status_sync(self, request: Request, body: bytes) -> Response:
        # The JS SDK's runSync calls this once /runsync's own wait ran out: `?wait=` ms (it sends
        # 1000..90000), answered like /runsync, with the status body as soon as the job ends.
        found = self._job_or_404(request)
        if isinstance(found, JSONResponse):
            return found
        wait_ms = self._wait_ms(
            request, self.config.runsync_wait_default_ms, 1, self.config.runsync_wait_max_ms
        )
        if isinstance(wait_ms, JSONResponse):
            return wait_ms
        return await self._until_terminal(found, wait_ms)

    async def _cancel(self, request: Request, body: bytes) -> Response:
        found = self._job_or_404(request)
        if isinstance(found, JSONResponse):
            return found
        self.table.cancel(found)
        return JSONResponse({"id": found.id, "status": found.status.value})

    async def _retry(self, request: Request, body: bytes) -> Response:
        found = self._job_or_404(request)
        if isinstance(found, JSONResponse):
            return found
        if not self.table.retry(found):
            return _error(
                400, f"only FAILED or TIMED_OUT jobs can be retried; this one is {found.status.value}"
            )
        return JSONResponse({"id": found.id, "status": found.status.value})

    async def _purge_queue(self, request: Request, body: bytes) -> Response:
        return JSONResponse({"removed": self.table.purge_queue(), "status": "completed"})

    async def _health(self, request: Request, body: bytes) -> Response:
        return JSONResponse(self.table.health())

    # ---- worker side -------------------------------------------------------------------------------

    async def _job_take(self, request: Request, body: bytes) -> Response:
        worker_id = request.path_params["worker_id"]
        batch = request.url.path.split("/")[-2] == "job-take-batch"
        n = 1
        if batch:
            try:
                n = int(request.query_params.get("batch_size", "1"))
            except ValueError:
                return _error(400, '"batch_size" must be an integer')
            if n < 1:
                return _error(400, '"batch_size" must be at least 1')
        worker = self.table.seen(worker_id)
        worker.job_in_progress = request.query_params.get("job_in_progress") == "1"
        deadline = time.monotonic() + self.config.job_take_wait_s
        generation = self.table.poll_generation
        while self.table.poll_generation == generation:
            if self.table.queue:
                if await request.is_disconnected():
                    break  # nobody left to hand a job to: leave it queued
                jobs = self.table.take(worker_id, n)
                if jobs:
                    if batch:
                        return JSONResponse([job.take_request() for job in jobs])
                    return JSONResponse(jobs[0].take_request())
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await self.table.queue_changed.wait(remaining)
        return Response(status_code=204)

    def _parse_worker_body(self, body: bytes) -> dict[str, Any] | JSONResponse:
        try:
            parsed = json.loads(body)
        except ValueError:
            return _error(400, "body is not valid JSON")
        if not isinstance(parsed, dict):
            return _error(400, "body must be a JSON object")
        return parsed

    async def _job_stream(self, request: Request, body: bytes) -> Response:
        parsed = self._parse_worker_body(body)
        if isinstance(parsed, JSONResponse):
            return parsed
        worker_id = request.path_params["worker_id"]
        self.table.seen(worker_id)
        job = self.table.holder_job(worker_id, request.path_params["job_id"])
        if job is None:
            self.stats.count("job_stream_discarded")  # late: the job was cancelled, timed out or is gone
            return JSONResponse({})
        n = job.stream_items + 1
        failures_left = self.faults.stream_item_5xx.get(n, 0)
        if failures_left > 0:
            self.faults.stream_item_5xx[n] = failures_left - 1
            return _error(503, "injected fault")
        job.stream_items = n
        if self.faults.kill_worker_on_stream_item == n:
            self._kill_worker(worker_id)
            return _error(503, "worker killed by fault injection")
        if n in self.faults.reject_stream_items:
            return _error(400, "injected fault")
        if n in self.faults.drop_stream_items:
            self.stats.count("stream_items_dropped")
            return JSONResponse({})
        try:
            self.table.add_stream_item(job, parsed.get("output"))
        except ValueError:  # NaN or Infinity: not JSON, so no `/stream` reader could take it
            return _error(400, "output holds NaN or Infinity, which JSON cannot carry")
        return JSONResponse({})

    async def _job_done(self, request: Request, body: bytes) -> Response:
        if self.faults.take_job_done_5xx():
            return _error(503, "injected fault")
        parsed = self._parse_worker_body(body)
        if isinstance(parsed, JSONResponse):
            return parsed
        worker_id = request.path_params["worker_id"]
        self.table.seen(worker_id)
        job = self.table.holder_job(worker_id, request.path_params["job_id"])
        if job is None:
            self.stats.count("job_done_discarded")
            return JSONResponse({})
        if parsed.get("status") == JobStatus.IN_PROGRESS.value:
            self.table.set_progress(job, parsed.get("output"))  # runpod.serverless.progress_update
        else:
            self.table.complete(job, parsed)
        return JSONResponse({})

    async def _job_stop(self, request: Request, body: bytes) -> Response:
        worker = self.table.seen(request.path_params["worker_id"])
        deadline = time.monotonic() + self.config.job_stop_wait_s
        generation = self.table.poll_generation
        while not worker.stop and self.table.poll_generation == generation:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await worker.stop_changed.wait(remaining)
        ids = self.table.stop_signals(worker.id)
        if not ids:
            return Response(status_code=204)
        return JSONResponse({"jobsToStop": ids})

    async def _ping(self, request: Request, body: bytes) -> Response:
        query = request.query_params
        unhealthy = None
        if query.get("status") == "unhealthy":
            unhealthy = f"{query.get('check', '?')}: {query.get('reason', '')}"
        job_ids = [job_id for job_id in query.get("job_id", "").split(",") if job_id]
        self.table.ping(
            request.path_params["worker_id"],
            job_ids=job_ids,
            unhealthy=unhealthy,
            version=query.get("runpod_version"),
        )
        return JSONResponse({})

    # ---- emulator-only -----------------------------------------------------------------------------

    async def _emulator_stats(self, request: Request) -> Response:
        return JSONResponse(self.stats.snapshot())

    async def _emulator_jobs(self, request: Request) -> Response:
        return JSONResponse(
            [dict(job.status_body(), buffered=len(job.stream)) for job in list(self.table.jobs.values())]
        )

    async def _emulator_faults(self, request: Request) -> Response:
        try:
            changes = json.loads(await request.body())
            if not isinstance(changes, dict):
                raise ValueError("not an object")
            for name, value in changes.items():
                if name not in Faults.__dataclass_fields__:
                    raise ValueError(f"unknown fault {name!r}")
                current = getattr(self.faults, name)
                if isinstance(current, set):
                    value = set(value)
                elif isinstance(current, dict):
                    value = {int(k): int(v) for k, v in value.items()}
                setattr(self.faults, name, value)
        except (ValueError, TypeError, AttributeError) as exc:
            return _error(400, f"bad faults: {exc}")
        return JSONResponse({"ok": True})

    async def _emulator_expire(self, request: Request) -> Response:
        if not self.table.expire(request.path_params["job_id"]):
            return _error(404, "request does not exist")
        return JSONResponse({"ok": True})
