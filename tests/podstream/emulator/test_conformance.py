"""Conformance: the runpod SDK's real worker loop and its own clients, against the emulator.

Nothing here speaks RunPod's API by hand: workers are `runpod.serverless.start` in subprocesses
(sdk_worker.py), clients are `runpod.Endpoint` and `runpod.AsyncioEndpoint`. Worker processes are slow to
start, so one emulator per handler kind, each with one worker, serves the whole module.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests

from podstream.emulator import Emulator
from tests.podstream.emulator.support import config, endpoint, sdk

WORKER = str(Path(__file__).with_name("sdk_worker.py"))

# kind -> (worker environment, emulator config changes)
KINDS: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
    "async": ({"EMU_MODE": "async", "EMU_CONCURRENCY": "2"}, {}),
    "sync": ({"EMU_MODE": "sync"}, {}),
    "plain": ({"EMU_MODE": "plain"}, {}),
    "aggregate": ({"EMU_MODE": "async", "EMU_AGGREGATE": "1"}, {"max_job_done_bytes": 20_000}),
    "returns_generator": ({"EMU_MODE": "returns_generator"}, {}),
}


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Emulator]]:
    logs = tmp_path_factory.mktemp("worker-logs")
    with contextlib.ExitStack() as stack:
        emus: dict[str, Emulator] = {}
        for kind, (env, changes) in KINDS.items():
            cfg = config(job_take_wait_s=5, job_stop_wait_s=5, heartbeat_grace_s=15, **changes)
            emu = stack.enter_context(Emulator(cfg).serve_in_thread())
            emu.spawn_workers(1, [sys.executable, WORKER], env=env, log_dir=logs / kind, prefix=kind)
            emus[kind] = emu
        for emu in emus.values():
            emu.wait_for_workers(1, timeout=90)
        yield emus
        # stop the workers side by side, not one emulator after the other
        stoppers = [threading.Thread(target=emu.stop_workers) for emu in emus.values()]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join(30)
        assert not any(w.alive for emu in emus.values() for w in emu.workers)


@pytest.fixture(autouse=True)
def _clean_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "fleet" in request.fixturenames:
        for emu in request.getfixturevalue("fleet").values():
            emu.faults.reset()


def wait_status(job: Any, wanted: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while (status := job._fetch_job()["status"]) != wanted:
        assert time.monotonic() < deadline, f"job stayed {status}, expected {wanted}"
        time.sleep(0.1)
    return str(status)


def worker_log(emu: Emulator) -> str:
    return "".join(w.log_text() for w in emu.workers)


# ---- streaming handlers ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
def test_generator_handler_streams_every_item_in_order(fleet: dict[str, Emulator], kind: str) -> None:
    emu = fleet[kind]
    job = endpoint(emu).run({"items": 5, "size": 100, "sleep": 0.05})
    items = list(job.stream())
    assert items == [{"i": k, "data": "x" * 100} for k in range(5)]
    assert job.status() == "COMPLETED"
    state = emu.job(job.job_id)
    assert state is not None
    # return_aggregate_stream=False: the final result is an empty list, the return value is dropped
    assert state["output"] == [] and state["workerId"] == f"{kind}-1"
    assert emu.stats()["routes"]["job-stream"]["max_request_bytes"] < 200


def test_aggregate_stream_resends_every_item_in_job_done(fleet: dict[str, Emulator]) -> None:
    emu = fleet["aggregate"]
    job = endpoint(emu).run({"items": 3, "size": 1000})
    assert len(list(job.stream())) == 3
    assert job.output() == [{"i": k, "data": "x" * 1000} for k in range(3)]
    assert emu.stats()["routes"]["job-done"]["max_request_bytes"] > 3000


def test_aggregate_stream_over_the_result_cap_loses_the_result(fleet: dict[str, Emulator]) -> None:
    emu = fleet["aggregate"]  # its job-done cap is 20 kB here, 20 MB in production
    job = endpoint(emu).run({"input": {"items": 5, "size": 5000}, "policy": {"executionTimeout": 3000}})
    wait_status(job, "TIMED_OUT")
    assert emu.stats()["routes"]["job-done"]["statuses"].get("400") == 1
    assert "Failed to return job results" in worker_log(emu)


def test_item_over_1mb_is_dropped_silently_and_the_job_completes(fleet: dict[str, Emulator]) -> None:
    emu = fleet["async"]
    before = emu.stats()["routes"].get("job-stream", {}).get("requests", 0)  # 0 if this test runs first
    job = endpoint(emu).run({"items": 3, "sizes": [10, 1_000_001, 10]})
    items = list(job.stream())
    assert [item["i"] for item in items] == [0, 2]  # item 1 is gone, nothing says so
    assert job.status() == "COMPLETED"
    stats = emu.stats()["routes"]["job-stream"]
    assert stats["requests"] - before == 3  # a 400 is not retried
    assert stats["max_request_bytes"] > 1_000_000
    assert "Failed to return job results" in worker_log(emu)


def test_stream_post_5xx_is_retried_three_times_then_dropped(fleet: dict[str, Emulator]) -> None:
    emu = fleet["async"]
    emu.faults.stream_item_5xx = {2: 1, 4: 3}  # item 2 recovers on its 2nd try, item 4 fails all 3
    before = emu.stats()["routes"].get("job-stream", {"statuses": {}})["statuses"].get("503", 0)
    job = endpoint(emu).run({"items": 5})
    items = list(job.stream())
    assert [item["i"] for item in items] == [0, 1, 2, 4]
    assert emu.stats()["routes"]["job-stream"]["statuses"]["503"] - before == 4
    assert job.status() == "COMPLETED"


def test_raising_generator_fails_the_job_and_keeps_streamed_items(fleet: dict[str, Emulator]) -> None:
    emu = fleet["async"]
    job = endpoint(emu).run({"items": 5, "raise_at": 3})
    items = list(job.stream())  # FAILED is final for the SDK client
    assert [item["i"] for item in items] == [0, 1, 2]
    status = job._fetch_job()
    assert status["status"] == "FAILED"
    assert status["error"].startswith("handler: boom at 3") and "traceback:" in status["error"]


def test_yielding_an_error_dict_fails_the_job(fleet: dict[str, Emulator]) -> None:
    emu = fleet["sync"]
    job = endpoint(emu).run({"items": 5, "error_at": 2})
    items = list(job.stream())
    assert [item["i"] for item in items] == [0, 1]  # the error itself is not streamed
    status = job._fetch_job()
    assert status["status"] == "FAILED" and status["error"] == "bad item 2"


def test_handler_returning_a_generator_never_sends_a_result(fleet: dict[str, Emulator]) -> None:
    emu = fleet["returns_generator"]
    job = endpoint(emu).run({"input": {"items": 2}, "policy": {"executionTimeout": 3000}})
    wait_status(job, "TIMED_OUT")
    assert emu.stats()["routes"].get("job-stream") is None  # nothing was ever streamed
    assert "Error while returning job result" in worker_log(emu)


def test_batch_take_runs_jobs_concurrently(fleet: dict[str, Emulator]) -> None:
    emu = fleet["async"]  # concurrency_modifier -> 2: the SDK takes jobs from job-take-batch
    ep = endpoint(emu)
    jobs = [ep.run({"hold": 1.5, "items": 1}) for _ in range(2)]
    deadline = time.monotonic() + 30
    while not all((emu.job(j.job_id) or {}).get("status") == "IN_PROGRESS" for j in jobs):
        assert time.monotonic() < deadline, "the two jobs never ran at the same time"
        time.sleep(0.05)
    for job in jobs:
        wait_status(job, "COMPLETED")
    assert emu.stats()["routes"]["job-take-batch"]["requests"] > 0


# ---- cancellation ---------------------------------------------------------------------------------


def test_cancel_reaches_the_async_handler_through_job_stop(
    fleet: dict[str, Emulator], tmp_path: Path
) -> None:
    emu = fleet["async"]
    mark = tmp_path / "mark"
    job = endpoint(emu).run({"hold": 60, "items": 1, "mark": str(mark)})
    wait_status(job, "IN_PROGRESS")
    done_before = emu.stats()["routes"].get("job-done", {}).get("requests", 0)
    assert job.cancel() == {"id": job.job_id, "status": "CANCELLED"}
    deadline = time.monotonic() + 20
    while not mark.exists():
        assert time.monotonic() < deadline, "the handler was never cancelled"
        time.sleep(0.05)
    assert mark.read_text() == "cancelled"
    assert emu.stats()["routes"]["job-stop"]["statuses"]["200"] >= 1
    # the SDK's stream() does not treat CANCELLED as final: it keeps polling
    finished = threading.Event()

    def consume() -> None:
        # it polls until the fleet's emulator stops at the end of the module, and then its next poll is
        # refused: that ends the thread, and is not a failure of this test
        with contextlib.suppress(requests.RequestException):
            for _ in job.stream():
                pass
            finished.set()

    threading.Thread(target=consume, daemon=True).start()
    assert not finished.wait(2.5)
    # no job-done was sent for the stopped job, and the worker takes the next one
    assert emu.stats()["routes"].get("job-done", {}).get("requests", 0) == done_before
    assert list(endpoint(emu).run({"items": 1}).stream()) == [{"i": 0, "data": ""}]


# ---- plain handlers and the rest of the client API -------------------------------------------------


def test_plain_handler_result_progress_and_runsync(fleet: dict[str, Emulator]) -> None:
    emu = fleet["plain"]
    ep = endpoint(emu)
    job = ep.run({"progress": ["25%", "75%"], "sleep": 0.4, "output": {"answer": 42}})
    seen: set[Any] = set()
    while (status := job._fetch_job())["status"] != "COMPLETED":
        if status["status"] == "IN_PROGRESS" and "output" in status:
            seen.add(status["output"])
        time.sleep(0.05)
    assert seen and seen <= {"25%", "75%"}
    assert job.output() == {"answer": 42}
    assert ep.run_sync({"output": [1, 2]}, timeout=30) == [1, 2]
    health = ep.health()
    assert health["jobs"]["completed"] >= 2 and health["workers"]["idle"] + health["workers"]["running"] == 1
    assert ep.purge_queue() == {"removed": 0, "status": "completed"}


def test_plain_handler_exception_fails_the_job(fleet: dict[str, Emulator]) -> None:
    job = endpoint(fleet["plain"]).run({"raise": "no good"})
    wait_status(job, "FAILED")
    error = job._fetch_job()["error"]
    assert '"error_message": "no good"' in error


async def test_asyncio_client(fleet: dict[str, Emulator]) -> None:
    emu = fleet["async"]
    runpod = sdk(emu)
    async with aiohttp.ClientSession() as session:
        ep = runpod.AsyncioEndpoint(emu.config.endpoint_id, session)
        job = await ep.run({"items": 3, "sleep": 0.05})
        items = [item async for item in job.stream()]
        assert [item["i"] for item in items] == [0, 1, 2]
        assert await job.status() == "COMPLETED"
        assert await job.output(timeout=10) == []
        held = await ep.run({"hold": 60, "items": 1})
        while await held.status() != "IN_PROGRESS":
            pass
        assert (await held.cancel())["status"] == "CANCELLED"
        assert (await ep.health())["jobs"]["inQueue"] == 0


# ---- a worker that dies ---------------------------------------------------------------------------


def test_with_auth_off_the_sdk_still_pings_and_a_long_job_completes(tmp_path: Path) -> None:
    # The SDK sends no heartbeat when RUNPOD_AI_API_KEY is empty: an emulator without keys must still give
    # its workers one, or every job longer than the grace fails (bench.worker_wire at 1000 x 8 MB did).
    cfg = config(api_key=None, worker_api_key=None, job_take_wait_s=2, heartbeat_grace_s=3)
    with Emulator(cfg).serve_in_thread() as emu:
        emu.spawn_workers(1, [sys.executable, WORKER], env={"EMU_MODE": "async"}, log_dir=tmp_path)
        assert emu.wait_for_workers(1, timeout=90) == ["worker-1"]
        job = endpoint(emu).run({"items": 12, "sleep": 0.5})  # 6 s: twice the heartbeat grace
        assert len(list(job.stream())) == 12
        assert wait_status(job, "COMPLETED") == "COMPLETED"
        assert emu.stats()["routes"]["ping"]["requests"] >= 3


def test_worker_killed_mid_job_fails_the_job_and_is_replaced(tmp_path: Path) -> None:
    # A grace of 8 pings: on a loaded machine a live worker's pinger can miss 3 s, which failed the replacement's
    # job as if it had died too.
    cfg = config(job_take_wait_s=5, job_stop_wait_s=5, heartbeat_grace_s=8)
    with Emulator(cfg).serve_in_thread() as emu:
        emu.spawn_workers(1, [sys.executable, WORKER], env={"EMU_MODE": "async"}, log_dir=tmp_path)
        assert emu.wait_for_workers(1, timeout=90) == ["worker-1"]
        emu.faults.kill_worker_on_stream_item = 3
        job = endpoint(emu).run({"items": 10, "sleep": 0.1})
        wait_status(job, "FAILED")
        status = job._fetch_job()
        assert "worker-1 stopped sending heartbeats" in status["error"]
        first = emu.workers[0]
        assert first.killed and not first.alive and first.replaced_by == "worker-2"
        emu.faults.reset()
        emu.wait_for_workers(1, timeout=90)
        again = endpoint(emu).run({"items": 2})
        assert len(list(again.stream())) == 2
        assert emu.job(again.job_id)["workerId"] == "worker-2"  # type: ignore[index]
    assert all(not w.alive for w in emu.workers)
