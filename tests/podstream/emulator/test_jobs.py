"""JobTable without HTTP, on a hand-driven clock: deadlines, heartbeats, retention, stop reconciliation."""

from __future__ import annotations

from podstream.emulator import EmulatorConfig, Faults, JobStatus
from podstream.emulator.jobs import Job, JobTable


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def table(**changes: object) -> tuple[JobTable, Clock, list[Job]]:
    clock = Clock()
    ended: list[Job] = []
    cfg = EmulatorConfig(heartbeat_grace_s=10, **changes)  # type: ignore[arg-type]
    return JobTable(cfg, Faults(), on_terminal=ended.append, clock=clock), clock, ended


def test_take_is_fifo_and_marks_jobs_in_progress() -> None:
    jobs, clock, _ = table()
    a, b = jobs.submit({"n": 1}), jobs.submit({"n": 2})
    clock.now += 2
    (taken,) = jobs.take("w", 1)
    assert taken is a and a.status is JobStatus.IN_PROGRESS and b.status is JobStatus.IN_QUEUE
    assert a.status_body() == {"id": a.id, "status": "IN_PROGRESS", "delayTime": 2000, "workerId": "w"}
    assert jobs.take("w", 5) == [b] and jobs.take("w", 5) == []


def test_execution_timeout_signals_the_worker() -> None:
    jobs, clock, ended = table()
    job = jobs.submit({}, execution_timeout_ms=5000)
    jobs.take("w", 1)
    jobs.ping("w")
    clock.now += 4
    jobs.tick()
    assert job.status is JobStatus.IN_PROGRESS
    clock.now += 2
    jobs.ping("w")
    jobs.tick()
    assert job.status.value == "TIMED_OUT" and ended == [job]
    assert jobs.stop_signals("w") == [job.id] and jobs.stop_signals("w") == []
    assert job.status_body()["executionTime"] == 6000


def test_heartbeat_grace() -> None:
    jobs, clock, _ = table()
    job = jobs.submit({})
    jobs.take("w", 1)
    for _ in range(5):
        clock.now += 9
        jobs.ping("w")
        jobs.tick()
    assert job.status is JobStatus.IN_PROGRESS
    clock.now += 11
    jobs.tick()
    assert job.status.value == "FAILED" and "stopped sending heartbeats" in (job.error or "")


def test_retention_then_deletion_and_ttl() -> None:
    jobs, clock, _ = table(retention_run_s=30, retention_runsync_s=5)
    run, sync = jobs.submit({}), jobs.submit({}, sync=True)
    queued = jobs.submit({}, ttl_ms=60_000)
    for job in jobs.take("w", 2):
        jobs.complete(job, {"output": 1})
    clock.now += 6
    jobs.tick()
    assert jobs.get(sync.id) is None and jobs.get(run.id) is run
    clock.now += 25
    jobs.tick()
    assert jobs.get(run.id) is None and jobs.get(queued.id) is queued
    clock.now += 30
    jobs.tick()
    assert jobs.get(queued.id) is None and not jobs.queue


def test_ping_resignals_stops_for_jobs_the_worker_should_not_run() -> None:
    jobs, _, _ = table()
    job = jobs.submit({})
    jobs.take("w", 1)
    jobs.cancel(job)
    assert jobs.stop_signals("w") == [job.id]  # handed out, but say the SDK dropped it
    jobs.ping("w", job_ids=[job.id])
    assert jobs.stop_signals("w") == [job.id]
    running = jobs.submit({})
    jobs.take("w", 1)
    jobs.ping("w", job_ids=[running.id])
    assert jobs.stop_signals("w") == []


def test_health_and_unhealthy_workers() -> None:
    jobs, _, _ = table()
    jobs.expect_worker("spawned")
    jobs.ping("sick", unhealthy="_disk_check: full")
    jobs.ping("idle")
    assert jobs.health()["workers"] == {
        "idle": 1,
        "initializing": 1,
        "ready": 1,
        "running": 0,
        "throttled": 0,
        "unhealthy": 1,
    }
