"""The HTTP API, driven by hand with httpx exactly as the SDK worker and clients speak it."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import httpx
import pytest

from podstream.emulator import RateLimit
from tests.podstream.emulator.conftest import Start
from tests.podstream.emulator.support import API_KEY, WORKER_KEY


async def wait_status(client: Any, job_id: str, status: str, within_s: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        body: dict[str, Any] = await client.status(job_id)
        if body["status"] == status:
            return body
        assert time.monotonic() < deadline, f"job stayed {body['status']}, expected {status}"
        await asyncio.sleep(0.05)


# ---- client API basics -------------------------------------------------------------------------------


async def test_run_queues_the_job_and_status_reports_it(serve: Start) -> None:
    s = await serve()
    response = await s.client.call("POST", "run", json={"input": {"x": 1}})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "IN_QUEUE" and body["id"]
    assert await s.client.status(body["id"]) == {"id": body["id"], "status": "IN_QUEUE"}
    # status also answers POST
    response = await s.client.call("POST", f"status/{body['id']}")
    assert response.json()["status"] == "IN_QUEUE"


async def test_authorization_is_checked_on_both_sides(serve: Start, http: httpx.AsyncClient) -> None:
    s = await serve()
    url = f"{s.emu.endpoint_url}/run"
    assert (await http.post(url, json={"input": 1})).status_code == 401
    assert (
        await http.post(url, json={"input": 1}, headers={"Authorization": "Bearer nope"})
    ).status_code == 401
    assert (await http.post(url, json={"input": 1}, headers={"Authorization": API_KEY})).status_code == 200
    assert (
        await http.post(url, json={"input": 1}, headers={"Authorization": f"Bearer {API_KEY}"})
    ).status_code == 200
    # worker routes take the worker key, not the client key
    take = s.worker.take_url + "&job_in_progress=0"
    assert (await http.get(take, headers={"Authorization": API_KEY})).status_code == 401
    assert (await http.get(take, headers={"Authorization": WORKER_KEY})).status_code == 200
    assert s.emu.worker_env("p")["RUNPOD_AI_API_KEY"] == WORKER_KEY


async def test_no_api_key_means_no_check(serve: Start, http: httpx.AsyncClient) -> None:
    s = await serve(api_key=None, worker_api_key=None)
    assert (await http.post(f"{s.emu.endpoint_url}/run", json={"input": 1})).status_code == 200


async def test_unknown_endpoint_and_unknown_job_are_404(serve: Start) -> None:
    s = await serve()
    response = await s.client.http.get(
        f"{s.emu.base_url}/v2/other/status/x", headers={"Authorization": API_KEY}
    )
    assert response.status_code == 404
    assert response.json() == {"error": "endpoint not found"}  # as docs/emulator.md gives it
    for method, path in (("GET", "status/nope"), ("GET", "stream/nope"), ("POST", "cancel/nope")):
        response = await s.client.call(method, path)
        assert response.status_code == 404
        assert response.json() == {"error": "request does not exist"}


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"not json", "not valid JSON"),
        (b"[1]", '"input"'),
        (b'{"nope": 1}', '"input"'),
        (b'{"input": 1, "policy": 5}', "policy"),
        (b'{"input": 1, "policy": {"executionTimeout": -1}}', "executionTimeout"),
        (b'{"input": 1, "policy": {"ttl": 5}}', "ttl"),
        (b'{"input": 1, "webhook": 5}', "webhook"),
    ],
)
async def test_run_rejects_bad_requests(serve: Start, body: bytes, fragment: str) -> None:
    s = await serve()
    response = await s.client.call("POST", "run", content=body)
    assert response.status_code == 400
    assert fragment in response.json()["error"]


async def test_run_and_runsync_body_caps(serve: Start) -> None:
    s = await serve(max_run_bytes=1000, max_runsync_bytes=2000)
    ok = json.dumps({"input": "x" * 900}).encode()
    big = json.dumps({"input": "x" * 1500}).encode()
    assert (await s.client.call("POST", "run", content=ok)).status_code == 200
    response = await s.client.call("POST", "run", content=big)
    assert response.status_code == 413
    assert "over the 1000 byte limit" in response.json()["error"]
    # the same body fits /runsync's larger cap
    assert (await s.client.call("POST", "runsync", content=big, params={"wait": "1"})).status_code == 200
    stats = s.emu.stats()
    assert stats["routes"]["run"]["max_request_bytes"] == len(big)
    assert stats["routes"]["run"]["statuses"] == {"200": 1, "413": 1}
    assert stats["events"]["run_oversize"] == 1


# ---- /stream: drain, long-poll, end of stream ------------------------------------------------------


async def test_stream_hands_out_each_item_once(serve: Start) -> None:
    s = await serve()
    job_id = await s.client.run({})
    job = await s.worker.take_one()
    assert job == {"id": job_id, "input": {}}
    for k in range(3):
        assert (await s.worker.stream(job_id, {"k": k})).status_code == 200
    first = await s.client.stream(job_id)
    assert first == {
        "id": job_id,
        "status": "IN_PROGRESS",
        "stream": [{"output": {"k": k}} for k in range(3)],
    }
    await s.worker.stream(job_id, {"k": 3})
    assert (await s.client.stream(job_id))["stream"] == [{"output": {"k": 3}}]


async def test_stream_answer_is_the_json_text_runpod_writes(serve: Start) -> None:
    """Entries are encoded when posted; the answer must still be exactly what a JSON encoder writes (compact,
    UTF-8, not ASCII-escaped), whatever the outputs hold."""
    s = await serve()
    job_id = await s.client.run({})
    await s.worker.take_one()
    outputs: list[Any] = [{"data": "QUJD", "é": 'ü\u2028"\\'}, [1, 2.5, None, True], "x", 7, None]
    for output in outputs:
        assert (await s.worker.stream(job_id, output)).status_code == 200
    response = await s.client.call("GET", f"stream/{job_id}")
    assert response.headers["content-type"] == "application/json"
    expected = {"id": job_id, "status": "IN_PROGRESS", "stream": [{"output": x} for x in outputs]}
    assert response.content == json.dumps(expected, ensure_ascii=False, separators=(",", ":")).encode()
    empty = await s.client.call("GET", f"stream/{job_id}", params={"wait": "1000"})
    assert empty.json() == {"id": job_id, "status": "IN_PROGRESS", "stream": []}


async def test_stream_item_holding_nan_is_rejected_with_400(serve: Start) -> None:
    s = await serve()
    job_id = await s.client.run({})
    await s.worker.take_one()
    response = await s.worker.stream_raw(job_id, b'{"output": {"loss": NaN}}')
    assert response.status_code == 400
    assert "NaN" in response.json()["error"]
    assert (await s.worker.stream(job_id, {"k": 1})).status_code == 200
    assert (await s.client.stream(job_id))["stream"] == [{"output": {"k": 1}}]  # the job runs on


async def test_stream_long_polls_until_an_item_arrives(serve: Start) -> None:
    s = await serve()
    job_id = await s.client.run({})
    await s.worker.take_one()
    started = time.monotonic()
    poll = asyncio.create_task(s.client.stream(job_id, wait_ms=20_000))
    await asyncio.sleep(0.3)
    assert not poll.done()  # held: nothing buffered yet
    await s.worker.stream(job_id, "late")
    body = await asyncio.wait_for(poll, 10)
    assert body["stream"] == [{"output": "late"}]
    assert time.monotonic() - started < 10


async def test_stream_long_poll_expires_empty_and_wait_is_clamped(serve: Start) -> None:
    s = await serve(stream_wait_min_ms=300)
    job_id = await s.client.run({})
    started = time.monotonic()
    body = await s.client.stream(job_id, wait_ms=1)  # clamped up to the 300 ms minimum
    assert body == {"id": job_id, "status": "IN_QUEUE", "stream": []}
    assert time.monotonic() - started >= 0.25
    assert (await s.client.call("GET", f"stream/{job_id}", params={"wait": "soon"})).status_code == 400


async def test_end_of_stream_is_terminal_status_and_empty_stream(serve: Start) -> None:
    s = await serve()
    job_id = await s.client.run({})
    await s.worker.take_one()
    await s.worker.stream(job_id, 1)
    await s.worker.stream(job_id, 2)
    assert (await s.worker.done(job_id, {"output": []})).status_code == 200
    # the last items come together with the terminal status ...
    last = await s.client.stream(job_id)
    assert last["status"] == "COMPLETED" and last["stream"] == [{"output": 1}, {"output": 2}]
    # ... and the next call, answered at once, is the end: terminal and empty
    started = time.monotonic()
    end = await s.client.stream(job_id, wait_ms=20_000)
    assert end == {"id": job_id, "status": "COMPLETED", "stream": []}
    assert time.monotonic() - started < 5
    status = await s.client.status(job_id)
    assert status["output"] == [] and status["workerId"] == "pod-1"
    assert status["delayTime"] >= 0 and status["executionTime"] >= 0


async def test_two_pollers_split_the_items(serve: Start) -> None:
    s = await serve()
    job_id = await s.client.run({})
    await s.worker.take_one()
    await s.worker.stream(job_id, "a")
    one = await s.client.stream(job_id)
    await s.worker.stream(job_id, "b")
    two = await s.client.call("POST", f"stream/{job_id}")  # POST is accepted too (Go SDK)
    assert one["stream"] == [{"output": "a"}]
    assert two.json()["stream"] == [{"output": "b"}]


async def test_stats_count_the_long_polls_held_at_once(serve: Start) -> None:
    s = await serve()
    job_id = await s.client.run({})
    await s.worker.take_one()
    await s.client.stream(job_id, wait_ms=300)
    await s.client.stream(job_id, wait_ms=300)  # one after the other: never two at once
    assert s.emu.stats()["routes"]["stream"]["max_in_flight"] == 1
    polls = [asyncio.create_task(s.client.stream(job_id, wait_ms=20_000)) for _ in range(2)]
    deadline = time.monotonic() + 10
    while s.emu.stats()["routes"]["stream"]["in_flight"] < 2:  # both arrived (and are held)
        assert time.monotonic() < deadline, s.emu.stats()["routes"]["stream"]
        await asyncio.sleep(0.02)
    assert s.emu.stats()["routes"]["stream"]["in_flight"] == 2
    s.emu.reset_stats()  # the two still held are counted on, and leave later without going below 0
    await s.worker.stream(job_id, "x")
    await s.worker.done(job_id, {"output": []})
    await asyncio.wait_for(asyncio.gather(*polls), 10)
    stream = s.emu.stats()["routes"]["stream"]
    assert (stream["in_flight"], stream["max_in_flight"], stream["requests"]) == (0, 2, 2)


# ---- worker API -----------------------------------------------------------------------------------


async def test_job_take_long_polls_and_answers_204_when_empty(serve: Start) -> None:
    s = await serve(job_take_wait_s=0.3)
    started = time.monotonic()
    assert (await s.worker.take()).status_code == 204
    assert time.monotonic() - started >= 0.25
    assert (await s.worker.stop_poll()).status_code == 204  # job-stop: nothing to stop
    s2 = await serve(job_take_wait_s=20)
    take = asyncio.create_task(s2.worker.take())
    await asyncio.sleep(0.2)
    job_id = await s2.client.run({"n": 1})
    response = await asyncio.wait_for(take, 10)
    assert response.status_code == 200
    assert response.json() == {"id": job_id, "input": {"n": 1}}
    assert (await s2.client.status(job_id))["status"] == "IN_PROGRESS"


async def test_job_take_batch_returns_a_list(serve: Start) -> None:
    s = await serve()
    ids = [await s.client.run({"n": n}) for n in range(3)]
    response = await s.worker.take(batch_size=2)
    assert response.json() == [{"id": ids[0], "input": {"n": 0}}, {"id": ids[1], "input": {"n": 1}}]
    response = await s.worker.take(batch_size=5)
    assert response.json() == [{"id": ids[2], "input": {"n": 2}}]
    bad = await s.worker.client.get(
        s.worker.take_url.replace("/job-take/", "/job-take-batch/") + "&batch_size=x",
        headers=s.worker.headers,
    )
    assert bad.status_code == 400


async def test_stream_item_over_1mb_is_rejected_with_400(serve: Start) -> None:
    s = await serve()
    job_id = await s.client.run({})
    await s.worker.take_one()
    fits = json.dumps({"output": "x" * (1_000_000 - 20)}).encode()
    too_big = json.dumps({"output": "x" * 1_000_000}).encode()
    assert len(fits) <= 1_000_000 < len(too_big)
    assert (await s.worker.stream_raw(job_id, fits)).status_code == 200
    response = await s.worker.stream_raw(job_id, too_big)
    assert response.status_code == 400
    assert "1000000 byte limit" in response.json()["error"]
    body = await s.client.stream(job_id)
    assert len(body["stream"]) == 1  # the oversized item is gone
    stats = s.emu.stats()
    assert stats["routes"]["job-stream"]["max_request_bytes"] == len(too_big)
    assert stats["routes"]["stream"]["max_response_bytes"] > len(fits)
    assert stats["events"]["job-stream_oversize"] == 1


async def test_job_done_over_cap_is_rejected_and_the_job_runs_on(serve: Start) -> None:
    s = await serve(max_job_done_bytes=1000)
    job_id = await s.client.run({}, policy={"executionTimeout": 1000})
    await s.worker.take_one()
    response = await s.worker.done(job_id, {"output": ["x" * 2000]})
    assert response.status_code == 400
    assert (await s.client.status(job_id))["status"] == "IN_PROGRESS"
    await wait_status(s.client, job_id, "TIMED_OUT")


async def test_job_done_error_fails_the_job(serve: Start) -> None:
    s = await serve()
    job_id = await s.client.run({})
    await s.worker.take_one()
    await s.worker.stream(job_id, "kept")
    await s.worker.done(job_id, {"error": "handler: boom"})
    status = await s.client.status(job_id)
    assert status["status"] == "FAILED" and status["error"] == "handler: boom"
    body = await s.client.stream(job_id)
    assert body == {"id": job_id, "status": "FAILED", "stream": [{"output": "kept"}]}  # error is not streamed


async def test_progress_update_shows_in_status_while_running(serve: Start) -> None:
    s = await serve()
    job_id = await s.client.run({})
    await s.worker.take_one()
    await s.worker.done(job_id, {"status": "IN_PROGRESS", "output": "50%"}, is_stream=False)
    status = await s.client.status(job_id)
    assert status["status"] == "IN_PROGRESS" and status["output"] == "50%"
    assert (await s.client.stream(job_id, wait_ms=300))["stream"] == []  # progress is not a stream item
    await s.worker.done(job_id, {"output": {"done": True}}, is_stream=False)
    assert (await s.client.status(job_id))["output"] == {"done": True}


async def test_cancel_stops_the_job_on_its_worker(serve: Start) -> None:
    s = await serve(job_stop_wait_s=20)
    job_id = await s.client.run({})
    await s.worker.take_one()
    stop_poll = asyncio.create_task(s.worker.stop_poll())
    await asyncio.sleep(0.2)
    response = await s.client.call("POST", f"cancel/{job_id}")
    assert response.json() == {"id": job_id, "status": "CANCELLED"}
    stop = await asyncio.wait_for(stop_poll, 10)
    assert stop.status_code == 200 and stop.json() == {"jobsToStop": [job_id]}
    # whatever the worker still sends is discarded
    assert (await s.worker.stream(job_id, "late")).status_code == 200
    assert (await s.worker.done(job_id, {"output": "late"})).status_code == 200
    assert await s.client.stream(job_id) == {"id": job_id, "status": "CANCELLED", "stream": []}
    assert "output" not in await s.client.status(job_id)
    assert s.emu.stats()["events"] == {"job_done_discarded": 1, "job_stream_discarded": 1}


async def test_cancel_of_a_queued_job_and_of_a_finished_one(serve: Start) -> None:
    s = await serve()
    job_id = await s.client.run({})
    await s.client.call("POST", f"cancel/{job_id}")
    assert (await s.client.status(job_id))["status"] == "CANCELLED"
    assert (await s.worker.take()).status_code == 204  # never handed out
    done_id = await s.client.run({})
    await s.worker.take_one()
    await s.worker.done(done_id, {"output": 1})
    response = await s.client.call("POST", f"cancel/{done_id}")
    assert response.json()["status"] == "COMPLETED"


async def test_retry_reruns_a_failed_job_under_the_same_id(serve: Start) -> None:
    s = await serve()
    job_id = await s.client.run({"a": 1})
    await s.worker.take_one()
    await s.worker.stream(job_id, "first run")
    await s.worker.done(job_id, {"error": "boom"})
    response = await s.client.call("POST", f"retry/{job_id}")
    assert response.json() == {"id": job_id, "status": "IN_QUEUE"}
    assert await s.client.stream(job_id, wait_ms=300) == {"id": job_id, "status": "IN_QUEUE", "stream": []}
    assert await s.worker.take_one() == {"id": job_id, "input": {"a": 1}}
    await s.worker.stream(job_id, "second run")
    await s.worker.done(job_id, {"output": []})
    assert (await s.client.stream(job_id))["stream"] == [{"output": "second run"}]
    status = await s.client.status(job_id)
    assert status["status"] == "COMPLETED" and status["retries"] == 1 and "error" not in status
    response = await s.client.call("POST", f"retry/{job_id}")
    assert response.status_code == 400  # only FAILED / TIMED_OUT


async def test_purge_queue_and_health(serve: Start) -> None:
    s = await serve()
    running = await s.client.run({})
    await s.worker.take_one()
    await s.worker.ping(runpod_version="1.12.0")
    queued = [await s.client.run({}) for _ in range(2)]
    health = (await s.client.call("GET", "health")).json()
    assert health["jobs"] == {"completed": 0, "failed": 0, "inProgress": 1, "inQueue": 2, "retried": 0}
    assert health["workers"]["running"] == 1
    response = await s.client.call("POST", "purge-queue")
    assert response.json() == {"removed": 2, "status": "completed"}
    for job_id in queued:
        assert (await s.client.status(job_id))["status"] == "CANCELLED"
    await s.worker.done(running, {"output": 1})
    health = (await s.client.call("GET", "health")).json()
    assert health["jobs"]["completed"] == 1 and health["jobs"]["inQueue"] == 0
    assert health["workers"]["idle"] == 1 and health["workers"]["running"] == 0


async def test_spawned_worker_is_initializing_until_it_calls_in(serve: Start) -> None:
    s = await serve()
    s.emu.spawn_workers(1, ["sleep", "30"])
    health = (await s.client.call("GET", "health")).json()
    assert health["workers"]["initializing"] == 1


async def test_unhealthy_ping_marks_the_worker(serve: Start) -> None:
    s = await serve()
    await s.worker.ping(status="unhealthy", check="_disk_check", reason="disk full")
    health = (await s.client.call("GET", "health")).json()
    assert health["workers"]["unhealthy"] == 1


# ---- deadlines ------------------------------------------------------------------------------------


async def test_execution_timeout_times_the_job_out_and_stops_it(serve: Start) -> None:
    s = await serve(job_stop_wait_s=20)
    job_id = await s.client.run({}, policy={"executionTimeout": 300})
    await s.worker.take_one()
    await s.worker.ping()
    stop = await asyncio.wait_for(s.worker.stop_poll(), 10)
    assert stop.json() == {"jobsToStop": [job_id]}
    assert (await s.client.status(job_id))["status"] == "TIMED_OUT"
    health = (await s.client.call("GET", "health")).json()
    assert health["jobs"]["failed"] == 1


async def test_lost_heartbeat_fails_the_job(serve: Start) -> None:
    s = await serve(heartbeat_grace_s=0.5)
    job_id = await s.client.run({})
    await s.worker.take_one()
    await s.worker.ping()
    status = await wait_status(s.client, job_id, "FAILED")
    assert "stopped sending heartbeats" in status["error"]


async def test_ignored_pings_fault_makes_a_live_worker_look_dead(serve: Start) -> None:
    s = await serve(heartbeat_grace_s=0.6)
    s.emu.faults.ignore_pings_from.add("pod-1")
    job_id = await s.client.run({})
    await s.worker.take_one()
    for _ in range(10):
        await s.worker.ping()
        await asyncio.sleep(0.1)
    assert (await s.client.status(job_id))["status"] == "FAILED"


async def test_ttl_deletes_the_job(serve: Start) -> None:
    s = await serve(ttl_min_ms=100)
    job_id = await s.client.run({}, policy={"ttl": 300})
    await asyncio.sleep(0.6)
    assert (await s.client.call("GET", f"status/{job_id}")).status_code == 404
    assert (await s.worker.take()).status_code == 204


async def test_results_are_kept_for_the_retention_then_404(serve: Start) -> None:
    s = await serve(retention_run_s=1.0, retention_runsync_s=0.1)
    job_id = await s.client.run({})
    await s.worker.take_one()
    kept_until = time.monotonic() + 0.9  # the job is done after this, and kept 1 s from then
    await s.worker.done(job_id, {"output": 1})
    assert (await s.client.status(job_id))["output"] == 1
    deadline = time.monotonic() + 10
    while (await s.client.call("GET", f"status/{job_id}")).status_code != 404:
        assert time.monotonic() < deadline, "still kept 10 s after a retention of 1 s"
        await asyncio.sleep(0.05)
    assert time.monotonic() >= kept_until, "gone before its retention ran out"
    assert (await s.client.call("GET", f"stream/{job_id}")).status_code == 404


async def test_results_expire_early_by_fault(serve: Start) -> None:
    s = await serve()
    job_id = await s.client.run({})
    assert s.emu.expire(job_id)
    assert (await s.client.call("GET", f"status/{job_id}")).status_code == 404
    assert not s.emu.expire(job_id)
    s.emu.faults.retention_s = 0.1
    other = await s.client.run({})
    await s.worker.take_one()
    await s.worker.done(other, {"output": 1})
    await asyncio.sleep(0.4)
    assert (await s.client.call("GET", f"status/{other}")).status_code == 404


async def test_runsync_waits_for_the_result(serve: Start) -> None:
    s = await serve()

    async def work() -> None:
        job = await s.worker.take_one()
        await s.worker.done(job["id"], {"output": {"sum": 3}}, is_stream=False)

    worker = asyncio.create_task(work())
    response = await s.client.call("POST", "runsync", json={"input": [1, 2]})
    await worker
    body = response.json()
    assert body["status"] == "COMPLETED" and body["output"] == {"sum": 3}
    # when the wait runs out first, the job's current state comes back and the client polls /status
    response = await s.client.call("POST", "runsync", json={"input": 1}, params={"wait": "200"})
    assert response.json()["status"] == "IN_QUEUE"


async def test_status_sync_waits_for_the_end_then_answers_the_status(serve: Start) -> None:
    """The JS SDK's runSync calls `GET /status-sync/{id}?wait=ms` once /runsync's own wait ran out."""
    s = await serve()
    job_id = await s.client.run({"n": 1})
    # nothing ends it within the wait: the current state comes back, as /runsync does
    response = await s.client.call("GET", f"status-sync/{job_id}", params={"wait": "200"})
    assert response.status_code == 200 and response.json() == {"id": job_id, "status": "IN_QUEUE"}

    waiting = asyncio.create_task(s.client.call("GET", f"status-sync/{job_id}", params={"wait": "20000"}))
    job = await s.worker.take_one()
    await asyncio.sleep(0.2)
    assert not waiting.done()  # still held: the job is running
    await s.worker.done(job["id"], {"output": {"sum": 3}}, is_stream=False)
    body = (await asyncio.wait_for(waiting, 10)).json()
    assert body["status"] == "COMPLETED" and body["output"] == {"sum": 3} and body["id"] == job_id
    # a finished job answers at once, POST works too; unknown ids and bad waits are refused
    again = await s.client.call("POST", f"status-sync/{job_id}", params={"wait": "90000"})
    assert again.json()["output"] == {"sum": 3}
    assert (await s.client.call("GET", "status-sync/nope")).status_code == 404
    bad = await s.client.call("GET", f"status-sync/{job_id}", params={"wait": "soon"})
    assert bad.status_code == 400 and "wait" in bad.json()["error"]
    assert s.emu.stats()["routes"]["status-sync"]["requests"] == 5


async def test_no_stop_signal_for_a_job_its_worker_completed(serve: Start) -> None:
    """The SDK's ping process can still list a job after job-done: that must not stop (cancel) it."""
    s = await serve(job_stop_wait_s=0.3)
    job_id = await s.client.run({})
    await s.worker.take_one()
    await s.worker.done(job_id, {"output": []})
    assert (await s.worker.ping(job_id=job_id, runpod_version="1.12.0")).status_code == 200
    assert (await s.worker.stop_poll()).status_code == 204  # no jobsToStop
    # also once the finished job is deleted (retention), and for a job this worker failed itself
    assert s.emu.expire(job_id)
    failed = await s.client.run({})
    await s.worker.take_one()
    await s.worker.done(failed, {"error": "handler: boom"})
    await s.worker.ping(job_id=f"{job_id},{failed}")
    assert (await s.worker.stop_poll()).status_code == 204
    # a job the platform ended (cancel) is still signalled when a ping names it
    cancelled = await s.client.run({})
    await s.worker.take_one()
    await s.client.call("POST", f"cancel/{cancelled}")
    assert (await s.worker.stop_poll()).json() == {"jobsToStop": [cancelled]}
    await s.worker.ping(job_id=cancelled)
    assert (await s.worker.stop_poll()).json() == {"jobsToStop": [cancelled]}


# ---- rate limits, faults, webhooks, stats ----------------------------------------------------------


async def test_rate_limit_answers_429(serve: Start) -> None:
    s = await serve(rate_limits={"status": RateLimit(3, window_s=60)})
    job_id = await s.client.run({})
    codes = [(await s.client.call("GET", f"status/{job_id}")).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert (await s.client.stream(job_id, wait_ms=1))["status"] == "IN_QUEUE"  # other routes unaffected


async def test_scripted_stream_faults_do_not_drain(serve: Start) -> None:
    s = await serve()
    job_id = await s.client.run({})
    await s.worker.take_one()
    await s.worker.stream(job_id, "kept")
    s.emu.faults.stream_responses = [429, 503]
    s.emu.faults.status_responses = [500]
    assert (await s.client.call("GET", f"stream/{job_id}")).status_code == 429
    assert (await s.client.call("GET", f"stream/{job_id}")).status_code == 503
    assert (await s.client.call("GET", f"status/{job_id}")).status_code == 500
    assert (await s.client.stream(job_id))["stream"] == [{"output": "kept"}]
    s.emu.faults.stream_delay_s = 0.3
    started = time.monotonic()
    await s.client.stream(job_id, wait_ms=1)
    assert time.monotonic() - started >= 0.25


async def test_stream_item_faults(serve: Start) -> None:
    s = await serve()
    faults = s.emu.faults
    faults.drop_stream_items = {2}
    faults.reject_stream_items = {3}
    faults.stream_item_5xx = {4: 2}
    job_id = await s.client.run({})
    await s.worker.take_one()
    codes = [(await s.worker.stream(job_id, k)).status_code for k in (1, 2, 3, 4, 4, 4, 5)]
    assert codes == [200, 200, 400, 503, 503, 200, 200]
    assert [x["output"] for x in (await s.client.stream(job_id))["stream"]] == [1, 4, 5]
    assert s.emu.stats()["events"]["stream_items_dropped"] == 1
    faults.job_done_5xx = 1
    assert (await s.worker.done(job_id, {"output": []})).status_code == 503
    assert (await s.worker.done(job_id, {"output": []})).status_code == 200
    faults.reset()
    assert faults.drop_stream_items == set() and faults.stream_item_5xx == {}


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[Any] = []
    fail_first = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).bodies.append(body)
        status = 500 if len(type(self).bodies) <= type(self).fail_first else 200
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[_Receiver]]]:
    handler = type("Receiver", (_Receiver,), {"bodies": [], "fail_first": 1})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_webhook_is_posted_on_completion_and_retried(
    serve: Start, receiver: tuple[str, type[_Receiver]]
) -> None:
    url, handler = receiver
    s = await serve(webhook_retry_delay_s=0.1)
    job_id = await s.client.run({}, webhook=url)
    await s.worker.take_one()
    await s.worker.done(job_id, {"output": {"ok": True}})
    deadline = time.monotonic() + 10
    while len(handler.bodies) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert handler.bodies[0] == handler.bodies[1]  # first answered 500, then retried
    assert handler.bodies[1]["id"] == job_id and handler.bodies[1]["status"] == "COMPLETED"
    assert handler.bodies[1]["output"] == {"ok": True}
    await asyncio.sleep(0.1)
    assert s.emu.stats()["events"]["webhooks_sent"] == 1


async def test_emulator_routes(serve: Start, http: httpx.AsyncClient) -> None:
    s = await serve()
    job_id = await s.client.run({"x": 1})
    stats = (await http.get(f"{s.emu.base_url}/_emulator/stats")).json()
    assert stats["routes"]["run"]["requests"] == 1
    jobs = (await http.get(f"{s.emu.base_url}/_emulator/jobs")).json()
    assert jobs == [{"id": job_id, "status": "IN_QUEUE", "buffered": 0}]
    response = await http.post(
        f"{s.emu.base_url}/_emulator/faults", json={"drop_stream_items": [2], "stream_item_5xx": {"1": 1}}
    )
    assert response.status_code == 200
    assert s.emu.faults.drop_stream_items == {2} and s.emu.faults.stream_item_5xx == {1: 1}
    assert (await http.post(f"{s.emu.base_url}/_emulator/faults", json={"nope": 1})).status_code == 400
    assert (await http.post(f"{s.emu.base_url}/_emulator/expire/{job_id}")).status_code == 200
    assert s.emu.job(job_id) is None
