"""The job table: RunPod's queue, job states, stream buffers and worker heartbeats, without any HTTP.

All methods run on the server's event loop. Waiting is done on `Signal`s that the table fires whenever
something a waiter may care about changes; waiters re-check their condition after each wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from podstream.emulator.config import EmulatorConfig
from podstream.emulator.faults import Faults
from podstream.wire import TERMINAL_STATUSES


class JobStatus(StrEnum):
    IN_QUEUE = "IN_QUEUE"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(JobStatus(status) for status in TERMINAL_STATUSES)


class Signal:
    """A broadcast wake-up: every `wait` pending when `fire` is called returns True."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seconds: float) -> bool:
        """Wait at most `seconds` for the next `fire`; True if it came."""
        event = self._event
        try:
            await asyncio.wait_for(event.wait(), max(0.0, seconds))
        except TimeoutError:
            return False
        return True


_NO_OUTPUT: Any = object()
#: How many of its own finished job ids a worker's record keeps (pings lag a job's end by one interval).
_FINISHED_KEPT = 256


@dataclass(eq=False)
class Job:
    id: str
    input: Any
    webhook: str | None
    execution_timeout_s: float
    ttl_s: float
    sync: bool
    created_at: float
    queued_at: float
    status: JobStatus = JobStatus.IN_QUEUE
    started_at: float | None = None
    finished_at: float | None = None
    worker_id: str | None = None
    output: Any = _NO_OUTPUT
    error: str | None = None
    progress: Any = _NO_OUTPUT
    #: Buffered `/stream` entries, each `{"output": ...}` already JSON-encoded (see `encode_entry`).
    stream: deque[bytes] = field(default_factory=deque)
    stream_items: int = 0  # items posted in this run, for fault injection
    retries: int = 0
    changed: Signal = field(default_factory=Signal)

    def status_body(self) -> dict[str, Any]:
        """What `GET /status/{id}` answers."""
        body: dict[str, Any] = {"id": self.id, "status": self.status.value}
        if self.started_at is not None:
            body["delayTime"] = round((self.started_at - self.queued_at) * 1000)
        if self.finished_at is not None and self.started_at is not None:
            body["executionTime"] = round((self.finished_at - self.started_at) * 1000)
        if self.worker_id is not None:
            body["workerId"] = self.worker_id
        if self.output is not _NO_OUTPUT:
            body["output"] = self.output
        elif self.status is JobStatus.IN_PROGRESS and self.progress is not _NO_OUTPUT:
            body["output"] = self.progress
        if self.error is not None:
            body["error"] = self.error
        if self.retries:
            body["retries"] = self.retries
        return body

    def take_request(self) -> dict[str, Any]:
        """What job-take hands the worker."""
        return {"id": self.id, "input": self.input}


@dataclass(eq=False)
class Worker:
    id: str
    first_seen: float
    spawned: bool = False
    contacted: bool = False
    last_ping: float | None = None
    last_seen: float = 0.0
    jobs: set[str] = field(default_factory=set)
    unhealthy: str | None = None  # the fitness check that failed, as reported on ping
    runpod_version: str | None = None
    job_in_progress: bool = False  # as the worker last said on job-take
    stop: deque[str] = field(default_factory=deque)
    stop_changed: Signal = field(default_factory=Signal)
    # Jobs this worker itself ended with job-done (most recent last). Its ping process reads the SDK's
    # job list on its own clock and can still name them afterwards: they must not be stopped then.
    finished: deque[str] = field(default_factory=lambda: deque(maxlen=_FINISHED_KEPT))

    def heartbeat_age(self, now: float) -> float:
        return now - (self.last_ping if self.last_ping is not None else self.first_seen)


class JobTable:
    def __init__(
        self,
        config: EmulatorConfig,
        faults: Faults,
        *,
        on_terminal: Callable[[Job], None] = lambda job: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.faults = faults
        self.jobs: dict[str, Job] = {}
        self.queue: deque[str] = deque()
        self.queue_changed = Signal()
        self.workers: dict[str, Worker] = {}
        self.closing = False
        # Bumped to answer every pending worker long-poll now (workers stopping, server closing).
        self.poll_generation = 0
        self.counters = {"completed": 0, "failed": 0, "retried": 0}
        self._on_terminal = on_terminal
        self._clock = clock

    # ---- client side -------------------------------------------------------------------------------

    def submit(
        self,
        job_input: Any,
        *,
        webhook: str | None = None,
        execution_timeout_ms: int | None = None,
        ttl_ms: int | None = None,
        sync: bool = False,
    ) -> Job:
        now = self._clock()
        timeout_ms = (
            self.config.execution_timeout_ms if execution_timeout_ms is None else execution_timeout_ms
        )
        ttl = self.config.ttl_ms if ttl_ms is None else ttl_ms
        job = Job(
            id=f"{uuid.uuid4()}-e1",
            input=job_input,
            webhook=webhook,
            execution_timeout_s=timeout_ms / 1000,
            ttl_s=ttl / 1000,
            sync=sync,
            created_at=now,
            queued_at=now,
        )
        self.jobs[job.id] = job
        self.queue.append(job.id)
        self.queue_changed.fire()
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def drain(self, job: Job) -> list[bytes]:
        """Hand out every buffered stream entry (JSON text), once."""
        items = list(job.stream)
        job.stream.clear()
        return items

    def cancel(self, job: Job) -> None:
        if job.status is JobStatus.IN_QUEUE:
            self._unqueue(job)
            self._finish(job, JobStatus.CANCELLED)
        elif job.status is JobStatus.IN_PROGRESS:
            self._finish(job, JobStatus.CANCELLED, stop_worker=True)

    def retry(self, job: Job) -> bool:
        """Re-run a FAILED or TIMED_OUT job under the same id; its earlier output is wiped."""
        if job.status not in (JobStatus.FAILED, JobStatus.TIMED_OUT):
            return False
        now = self._clock()
        job.status = JobStatus.IN_QUEUE
        job.queued_at = now
        job.started_at = job.finished_at = None
        job.worker_id = None
        job.output = job.progress = _NO_OUTPUT
        job.error = None
        job.stream.clear()
        job.stream_items = 0
        job.retries += 1
        self.counters["retried"] += 1
        self.queue.append(job.id)
        self.queue_changed.fire()
        job.changed.fire()
        return True

    def purge_queue(self) -> int:
        purged = [self.jobs[job_id] for job_id in self.queue if job_id in self.jobs]
        self.queue.clear()
        for job in purged:
            self._finish(job, JobStatus.CANCELLED)
        return len(purged)

    def health(self) -> dict[str, Any]:
        in_queue = sum(1 for j in self.jobs.values() if j.status is JobStatus.IN_QUEUE)
        in_progress = sum(1 for j in self.jobs.values() if j.status is JobStatus.IN_PROGRESS)
        workers = {"idle": 0, "initializing": 0, "ready": 0, "running": 0, "throttled": 0, "unhealthy": 0}
        for worker in self.workers.values():
            if worker.unhealthy is not None:
                workers["unhealthy"] += 1
            elif not worker.contacted:
                workers["initializing"] += 1
            elif worker.jobs:
                workers["running"] += 1
            else:
                workers["idle"] += 1
                workers["ready"] += 1
        return {
            "jobs": {
                "completed": self.counters["completed"],
                "failed": self.counters["failed"],
                "inProgress": in_progress,
                "inQueue": in_queue,
                "retried": self.counters["retried"],
            },
            "workers": workers,
        }

    # ---- worker side -------------------------------------------------------------------------------

    def expect_worker(self, worker_id: str) -> None:
        """A worker process was started: it counts as initializing until it first calls in."""
        self.workers.setdefault(worker_id, Worker(id=worker_id, first_seen=self._clock(), spawned=True))

    def seen(self, worker_id: str) -> Worker:
        now = self._clock()
        worker = self.workers.get(worker_id)
        if worker is None:
            worker = self.workers[worker_id] = Worker(id=worker_id, first_seen=now)
        worker.contacted = True
        worker.last_seen = now
        return worker

    def ping(
        self,
        worker_id: str,
        *,
        job_ids: list[str] | None = None,
        unhealthy: str | None = None,
        version: str | None = None,
    ) -> None:
        """A heartbeat. It lists the jobs the worker believes it runs (`job_id=a,b`): any of them that
        is no longer running there (cancelled or timed out while the stop signal raced the job's start,
        deleted) is signalled on job-stop again. (unconfirmed: the reconciliation RunPod does.)"""
        worker = self.seen(worker_id)
        if unhealthy is not None:
            worker.unhealthy = unhealthy
            return
        if worker_id in self.faults.ignore_pings_from:
            return
        worker.last_ping = self._clock()
        worker.runpod_version = version or worker.runpod_version
        stale = [
            job_id
            for job_id in job_ids or []
            if self.holder_job(worker_id, job_id) is None and job_id not in worker.finished
        ]
        fresh = [job_id for job_id in stale if job_id not in worker.stop]
        if fresh:
            worker.stop.extend(fresh)
            worker.stop_changed.fire()

    def take(self, worker_id: str, n: int) -> list[Job]:
        now = self._clock()
        worker = self.seen(worker_id)
        taken: list[Job] = []
        while self.queue and len(taken) < n:
            job = self.jobs.get(self.queue.popleft())
            if job is None or job.status is not JobStatus.IN_QUEUE:
                continue
            job.status = JobStatus.IN_PROGRESS
            job.started_at = now
            job.worker_id = worker_id
            worker.jobs.add(job.id)
            job.changed.fire()
            taken.append(job)
        return taken

    def holder_job(self, worker_id: str, job_id: str) -> Job | None:
        """The job if `worker_id` is currently running it; None for late posts (cancelled, timed out, ...)."""
        job = self.jobs.get(job_id)
        if job is None or job.status is not JobStatus.IN_PROGRESS or job.worker_id != worker_id:
            return None
        return job

    def add_stream_item(self, job: Job, output: Any) -> None:
        job.stream.append(encode_entry(output))
        job.changed.fire()

    def set_progress(self, job: Job, progress: Any) -> None:
        job.progress = progress
        job.changed.fire()

    def complete(self, job: Job, body: dict[str, Any]) -> None:
        """A job-done body: `{"output": x}` or `{"error": "..."}` (plus `stopPod` and such)."""
        worker = self.workers.get(job.worker_id or "")
        if worker is not None:
            worker.finished.append(job.id)
        if body.get("error"):
            self._finish(
                job, JobStatus.FAILED, error=str(body["error"]), output=body.get("output", _NO_OUTPUT)
            )
        else:
            self._finish(job, JobStatus.COMPLETED, output=body.get("output", _NO_OUTPUT))

    def stop_signals(self, worker_id: str) -> list[str]:
        worker = self.seen(worker_id)
        ids = list(worker.stop)
        worker.stop.clear()
        return ids

    # ---- time --------------------------------------------------------------------------------------

    def tick(self) -> None:
        """Apply every deadline: execution timeout, lost heartbeats, TTL, result retention."""
        now = self._clock()
        grace = self.config.heartbeat_grace_s
        for job in list(self.jobs.values()):
            if job.status is JobStatus.IN_PROGRESS and job.started_at is not None:
                worker = self.workers.get(job.worker_id or "")
                if now - job.started_at > job.execution_timeout_s:
                    self._finish(job, JobStatus.TIMED_OUT, stop_worker=True)
                elif worker is None or worker.heartbeat_age(now) > grace:
                    self._finish(
                        job,
                        JobStatus.FAILED,
                        error=f"worker {job.worker_id} stopped sending heartbeats (no ping for {grace:g} s)",
                        stop_worker=True,
                    )
            if job.status.terminal and job.finished_at is not None:
                retention = self.faults.retention_s
                if retention is None:
                    retention = self.config.retention_runsync_s if job.sync else self.config.retention_run_s
                if now - job.finished_at > retention:
                    self._delete(job)
                    continue
            if now - job.created_at > job.ttl_s:
                self._delete(job)
        for worker in list(self.workers.values()):
            if (
                worker.contacted
                and not worker.jobs
                and now - worker.last_seen > max(grace, 3 * self._poll_s())
            ):
                del self.workers[worker.id]

    def expire(self, job_id: str) -> bool:
        """Delete a job now, as retention or TTL would (fault injection: results expire early)."""
        job = self.jobs.get(job_id)
        if job is None:
            return False
        self._delete(job)
        return True

    def release_worker_polls(self) -> None:
        """Answer every pending job-take and job-stop long-poll now (with 204 when there is nothing)."""
        self.poll_generation += 1
        self.queue_changed.fire()
        for worker in self.workers.values():
            worker.stop_changed.fire()

    def close(self) -> None:
        """Release every long-poll: the server is going away."""
        self.closing = True
        self.poll_generation += 1
        self.queue_changed.fire()
        for job in self.jobs.values():
            job.changed.fire()
        for worker in self.workers.values():
            worker.stop_changed.fire()

    # ---- internals ---------------------------------------------------------------------------------

    def _poll_s(self) -> float:
        return max(self.config.job_take_wait_s, self.config.job_stop_wait_s)

    def _unqueue(self, job: Job) -> None:
        with contextlib.suppress(ValueError):
            self.queue.remove(job.id)

    def _release_worker(self, job: Job, *, stop: bool) -> None:
        worker = self.workers.get(job.worker_id or "")
        if worker is None:
            return
        worker.jobs.discard(job.id)
        if stop:
            worker.stop.append(job.id)
            worker.stop_changed.fire()

    def _finish(
        self,
        job: Job,
        status: JobStatus,
        *,
        error: str | None = None,
        output: Any = _NO_OUTPUT,
        stop_worker: bool = False,
    ) -> None:
        was_running = job.status is JobStatus.IN_PROGRESS
        job.status = status
        job.finished_at = self._clock()
        job.error = error
        job.output = output
        if status is JobStatus.COMPLETED:
            self.counters["completed"] += 1
        elif status in (JobStatus.FAILED, JobStatus.TIMED_OUT):
            self.counters["failed"] += 1
        if was_running:
            # A job ended by the platform (cancel, timeout) is stopped on its worker through job-stop.
            self._release_worker(job, stop=stop_worker)
        job.changed.fire()
        self._on_terminal(job)

    def _delete(self, job: Job) -> None:
        if job.status is JobStatus.IN_PROGRESS:
            self._release_worker(job, stop=True)
        elif job.status is JobStatus.IN_QUEUE:
            self._unqueue(job)
        del self.jobs[job.id]
        job.changed.fire()


def encode_entry(output: Any) -> bytes:
    """One `/stream` entry, `{"output": ...}`, as the JSON text `GET /stream` answers (Starlette's
    `JSONResponse` encoding, byte for byte).

    Encoded when the worker posts it, not when `/stream` is asked: RunPod encodes on its own machines, while
    the emulator shares the consumer's. Encoding a backlog of 100 MB at the `GET` put that work inside the
    relay's and the pull's measured time (0.3 of the bare loop with it, 0.9 without).
    """
    return encode_json({"output": output})


def encode_json(content: Any) -> bytes:
    """JSON as Starlette's `JSONResponse` writes it: compact, UTF-8, NaN refused (ValueError)."""
    return json.dumps(
        content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode()
