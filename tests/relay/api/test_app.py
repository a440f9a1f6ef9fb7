"""The HTTP API, end to end: real uvicorn on loopback, the RunPod emulator, a scripted worker."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from podstream.emulator import Emulator
from relay.api.app import create_app
from relay.config import ConfigError
from tests.relay.conftest import (
    BACKENDS,
    BUCKET_BACKENDS,
    Batch,
    RelayServer,
    ScriptedWorker,
    make_files,
    relay_settings,
    start_relay,
)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every test on `relay_server` runs on local disk and as a cluster replica (Redis + S3)."""
    return str(request.param)


async def submit(relay: RelayServer, http: httpx.AsyncClient) -> dict[str, Any]:
    r = await http.post(f"{relay.url}/v1/jobs", json={"input": {"prompt": "x"}})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def run_job(worker: ScriptedWorker, files: list[bytes], **kwargs: Any) -> Batch:
    job = await worker.take()
    batch = Batch(job["id"], files, **kwargs)
    for envelope in batch.envelopes:
        await worker.post(job["id"], envelope)
    await worker.done(job["id"])
    return batch


async def wait_done(relay: RelayServer, job: str, seconds: float = 20) -> None:
    for _ in range(int(seconds / 0.05)):
        store = relay.relay.job(job)
        if store is not None and store.finished:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job} did not finish")


@pytest.mark.parametrize("backend", BUCKET_BACKENDS)  # items in the bucket: on moto and s3rver
async def test_submit_stream_manifest_media(relay_server: RelayServer, worker: ScriptedWorker) -> None:
    files = make_files(3, 150_000)
    async with relay_server.http() as http:
        created = await submit(relay_server, http)
        job = created["id"]
        assert created["urls"]["ws"] == relay_server.ws_url
        await run_job(worker, files)
        await wait_done(relay_server, job)

        manifest = (await http.get(f"{relay_server.url}/v1/jobs/{job}")).json()
        assert manifest["status"] == "COMPLETED"
        assert manifest["errors"] == []
        assert [i["item"] for i in manifest["items"]] == [0, 1, 2]
        for entry, data in zip(manifest["items"], files, strict=True):
            assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
            r = await http.get(entry["url"])
            assert r.status_code == 200 and r.content == data
            assert r.headers["etag"] == f'"{entry["sha256"]}"'
            assert r.headers["content-type"] == "video/mp4"
            partial = await http.get(entry["url"], headers={"range": "bytes=10-19"})
            assert partial.status_code == 206 and partial.content == data[10:20]
            cached = await http.get(entry["url"], headers={"if-none-match": r.headers["etag"]})
            assert cached.status_code == 304 and cached.content == b""

        listing = (await http.get(f"{relay_server.url}/v1/jobs")).json()["jobs"]
        assert [j["id"] for j in listing] == [job]
        assert listing[0]["finished"] and listing[0]["items"] == 3

        events = (
            await http.get(f"{relay_server.url}/v1/jobs/{job}/events", params={"format": "json"})
        ).json()
        kinds = [e["k"] for e in events["events"]]
        assert kinds[0] == "status" and kinds[-1] == "done" and kinds.count("item") == 3
        assert [e["seq"] for e in events["events"]] == list(range(1, len(kinds) + 1))
        assert all(not any(k.startswith("_") for k in e) for e in events["events"])
        assert events["done"] is True


@pytest.mark.parametrize("backend", BUCKET_BACKENDS)
async def test_media_ranges_as_rfc_9110_has_them(relay_server: RelayServer, worker: ScriptedWorker) -> None:
    """Alike on local disk and from the bucket: a Range past the end is 416 with the size, one that cannot be
    read is ignored (the whole file), If-Range naming another version asks for the whole file."""
    data = make_files(1, 1000)[0]
    async with relay_server.http() as http:
        job = (await submit(relay_server, http))["id"]
        await run_job(worker, [data])
        await wait_done(relay_server, job)
        url = (await http.get(f"{relay_server.url}/v1/jobs/{job}")).json()["items"][0]["url"]
        etag = f'"{hashlib.sha256(data).hexdigest()}"'

        for unsatisfiable in ("bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=1000-,2000-2001"):
            for method in ("GET", "HEAD"):
                r = await http.request(method, url, headers={"range": unsatisfiable})
                assert r.status_code == 416, (unsatisfiable, method, r.status_code)
                assert r.headers["content-range"] == "bytes */1000"
            body = (await http.get(url, headers={"range": unsatisfiable})).json()
            assert body["error"]["code"] == "range_not_satisfiable"
            assert body["error"]["message"] == "no byte of this range exists: the file is 1000 bytes"

        for ignored in ("bytes=5-1", "items=0-9", "bytes=x-", "bytes=0-9;", f"bytes=0-{'9' * 30}"):
            r = await http.get(url, headers={"range": ignored})
            assert r.status_code == 200 and r.content == data, ignored
            assert "content-range" not in r.headers

        for tail in ("bytes=990-", "bytes=-10", "bytes=990-5000"):
            r = await http.get(url, headers={"range": tail})
            assert r.status_code == 206 and r.content == data[990:], tail
            assert r.headers["content-range"] == "bytes 990-999/1000"
        r = await http.get(url, headers={"range": "bytes=0-9", "if-range": etag})
        assert r.status_code == 206 and r.content == data[:10]
        r = await http.get(url, headers={"range": "bytes=0-9", "if-range": '"another-version"'})
        assert r.status_code == 200 and r.content == data
        r = await http.get(url, headers={"range": "bytes=1000-", "if-none-match": etag})
        assert r.status_code == 304  # the condition first, then the range


async def test_sse_resumes_with_last_event_id(relay_server: RelayServer, worker: ScriptedWorker) -> None:
    async with relay_server.http() as http:
        job = (await submit(relay_server, http))["id"]
        await run_job(worker, make_files(2, 10_000))
        await wait_done(relay_server, job)
        head = relay_server.relay.job(job).journal.published
        ids = []
        async with http.stream(
            "GET", f"{relay_server.url}/v1/jobs/{job}/events", headers={"last-event-id": "2"}
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            async for line in r.aiter_lines():
                if line.startswith("id: "):
                    ids.append(int(line[4:]))
        assert ids == list(range(3, head + 1))


async def test_long_poll_waits_for_new_records(relay_server: RelayServer, worker: ScriptedWorker) -> None:
    async with relay_server.http() as http:
        job = (await submit(relay_server, http))["id"]
        url = f"{relay_server.url}/v1/jobs/{job}/events"
        first = (await http.get(url, params={"format": "json", "wait": 30000})).json()
        assert first["events"] and first["events"][0]["k"] == "status"
        after = first["head"]
        waiting = asyncio.ensure_future(
            http.get(url, params={"format": "json", "after": after, "wait": 10000})
        )
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await run_job(worker, make_files(1, 1000))
        later = (await waiting).json()
        assert later["events"][0]["seq"] == after + 1


async def test_bad_requests_get_clean_errors(relay_server: RelayServer) -> None:
    async with relay_server.http() as http:
        base = relay_server.url
        r = await http.get(f"{base}/v1/jobs/no-such-job")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        r = await http.get(f"{base}/v1/jobs/..%2Fetc")
        assert r.status_code in (400, 404)
        r = await http.get(f"{base}/v1/jobs/-bad")
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_job_id"
        r = await http.post(f"{base}/v1/jobs", content=b"not json")
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json"
        r = await http.post(f"{base}/v1/jobs", json={"input": "x"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_input"
        r = await http.post(f"{base}/v1/jobs/unknown-on-runpod/attach")
        assert r.status_code == 404 and "RunPod does not know job" in r.json()["error"]["message"]
        assert not relay_server.relay.store.exists("unknown-on-runpod")  # nothing was created
        assert (await http.get(f"{base}/v1/jobs/unknown-on-runpod")).status_code == 404
        r = await http.get(f"{base}/v1/jobs/unknown-on-runpod/media/0")
        assert r.status_code == 404
        r = await http.get(f"{base}/v1/jobs/unknown-on-runpod/media/x")
        assert r.status_code == 400
        assert (await http.get(f"{base}/healthz")).json()["ok"] is True


async def test_attach_follows_a_job_submitted_elsewhere(
    relay_server: RelayServer, emulator: Emulator, worker: ScriptedWorker
) -> None:
    async with relay_server.http() as http:
        r = await http.post(f"{emulator.endpoint_url}/run", json={"input": {}})
        job = r.json()["id"]
        attached = await http.post(f"{relay_server.url}/v1/jobs/{job}/attach")
        assert attached.status_code == 201
        again = await http.post(f"{relay_server.url}/v1/jobs/{job}/attach")
        assert again.status_code == 200
        files = make_files(2, 5000)
        await run_job(worker, files)
        await wait_done(relay_server, job)
        manifest = (await http.get(f"{relay_server.url}/v1/jobs/{job}")).json()
        assert [i["size"] for i in manifest["items"]] == [len(f) for f in files]


async def test_cancel_and_failed_job_error(relay_server: RelayServer, worker: ScriptedWorker) -> None:
    async with relay_server.http() as http:
        job = (await submit(relay_server, http))["id"]
        taken = await worker.take()
        assert taken["id"] == job
        await worker.post(job, Batch(job, [b"abc"]).envelopes[0])
        await worker.done(job, error="handler: CUDA out of memory")
        await wait_done(relay_server, job)
        manifest = (await http.get(f"{relay_server.url}/v1/jobs/{job}")).json()
        assert manifest["status"] == "FAILED"
        codes = {e["code"] for e in manifest["errors"]}
        assert "missing_manifest" in codes
        records = (await http.get(f"{relay_server.url}/v1/jobs/{job}/events?format=json")).json()["events"]
        failed = [r for r in records if r["k"] == "status" and r["status"] == "FAILED"]
        assert "CUDA out of memory" in failed[0]["error"]

        job2 = (await submit(relay_server, http))["id"]
        r = await http.delete(f"{relay_server.url}/v1/jobs/{job2}")
        assert r.status_code == 200 and r.json()["status"] == "CANCELLED"
        await wait_done(relay_server, job2)
        assert (await http.get(f"{relay_server.url}/v1/jobs/{job2}")).json()["status"] == "CANCELLED"


async def test_hostile_inputs_never_answer_500(
    relay_server: RelayServer, worker: ScriptedWorker, emulator: Emulator
) -> None:
    """Issue 12 item 4: each of these answered 500 with a traceback; each is a clean 4xx now."""
    files = make_files(2, 3000)
    async with relay_server.http() as http, httpx.AsyncClient(timeout=30) as anonymous:
        base = relay_server.url
        job = (await submit(relay_server, http))["id"]
        await run_job(worker, files)
        await wait_done(relay_server, job)
        runs_before = emulator.stats()["routes"].get("run", {}).get("requests", 0)
        for client in (http, anonymous):
            for item in ("%C2%B2", "%D9%A1", "%EF%BC%91"):  # '²', Arabic-Indic one, fullwidth one
                r = await client.get(f"{base}/v1/jobs/{job}/media/{item}")
                assert r.status_code == 400 and r.json()["error"]["code"] == "bad_item", (item, r.text)
        r = await anonymous.get(f"{base}/v1/jobs/{job}/media/1?exp=%C2%B2&sig=x")
        assert r.status_code == 403 and r.json()["error"]["code"] == "bad_signature"
        r = await http.post(f"{base}/v1/jobs/{job}/tokens", content=b'{"ttl_s": NaN}')
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json", r.text
        r = await http.post(f"{base}/v1/jobs/{job}/tokens", content=b'{"ttl_s": Infinity}')
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json", r.text
        deep = b'{"input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        r = await http.post(f"{base}/v1/jobs", content=deep)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json", r.text
        deep_objects = b'{"input": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001
        r = await http.post(f"{base}/v1/jobs", content=deep_objects)
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json", r.text
        r = await http.post(f"{base}/v1/jobs/{job}/links", content=b"[" * 2040 + b"]" * 2040)  # its cap: 4 KB
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json", r.text
        r = await http.post(f"{base}/v1/jobs", content=b'{"input": {"prompt": "x", "steps": NaN}}')
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_json", r.text
        assert (
            emulator.stats()["routes"].get("run", {}).get("requests", 0) == runs_before
        )  # nothing reached RunPod
        # ASCII digits still work, and the relay is fine afterwards.
        r = await http.get(f"{base}/v1/jobs/{job}/media/1")
        assert r.status_code == 200 and r.content == files[1]
        assert (await http.get(f"{base}/healthz")).status_code == 200


VALID_INPUT = {"task": "text-to-image", "items": [{"id": "cat", "prompt": "a cat"}], "params": {"steps": 4}}


async def test_submit_checks_the_input_schema_before_runpod(tmp_path: Path, emulator: Emulator) -> None:
    """Issue 14 item 2: a typo or `steps: -3` is `400 bad_input` naming the field; RunPod sees nothing."""
    relay = await start_relay(relay_settings(tmp_path, emulator, input_schema="builtin"))
    try:
        async with relay.http() as http:
            runs = emulator.stats()["routes"].get("run", {}).get("requests", 0)
            bad = {
                "task": ({**VALID_INPUT, "task": "text-to-imgae"}, "task: 'text-to-imgae' is not one of"),
                "steps": (
                    {**VALID_INPUT, "params": {"steps": -3}},
                    "params.steps: -3 is less than the minimum",
                ),
                "item": ({**VALID_INPUT, "items": [{"id": "cat", "prompt": 5}]}, "items[0].prompt"),
            }
            for name, (job_input, expected) in bad.items():
                r = await http.post(f"{relay.url}/v1/jobs", json={"input": job_input})
                assert r.status_code == 400, (name, r.text)
                error = r.json()["error"]
                assert error["code"] == "bad_input" and expected in error["message"], (name, error)
            assert emulator.stats()["routes"].get("run", {}).get("requests", 0) == runs
            r = await http.post(f"{relay.url}/v1/jobs", json={"input": VALID_INPUT})
            assert r.status_code == 201, r.text
            assert emulator.stats()["routes"].get("run", {}).get("requests", 0) == runs + 1
    finally:
        await relay.stop()


async def test_a_worker_with_its_own_input_schema(tmp_path: Path, emulator: Emulator) -> None:
    schema = {"type": "object", "required": ["sizes"], "additionalProperties": False,
              "properties": {"sizes": {"type": "array", "items": {"type": "integer", "minimum": 1}}}}  # fmt: skip
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    relay = await start_relay(relay_settings(tmp_path, emulator, input_schema=str(path)))
    try:
        async with relay.http() as http:
            r = await http.post(f"{relay.url}/v1/jobs", json={"input": {"sizes": [10, 0]}})
            assert (
                r.status_code == 400
                and "sizes[1]: 0 is less than the minimum of 1" in r.json()["error"]["message"]
            )
            r = await http.post(f"{relay.url}/v1/jobs", json={"input": VALID_INPUT})
            assert r.status_code == 400 and "(the input)" in r.json()["error"]["message"]
            assert (
                await http.post(f"{relay.url}/v1/jobs", json={"input": {"sizes": [3]}})
            ).status_code == 201
    finally:
        await relay.stop()
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"PODSTREAM_INPUT_SCHEMA: the input schema .* is not JSON"):
        create_app(relay_settings(tmp_path, emulator, input_schema=str(path)))
    path.write_text(json.dumps({"type": "objekt"}))
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        create_app(relay_settings(tmp_path, emulator, input_schema=str(path)))


def test_import_relay_app_does_not_import_torch() -> None:
    code = "import relay.api.app, relay.api.input_schema, sys; assert 'torch' not in sys.modules, 'torch imported'"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # nor does loading the built-in schema (podstream.jobspec is pydantic only)
    code = "from relay.api.input_schema import load; import sys; load('builtin'); assert 'torch' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


async def test_readyz_reports_file_descriptor_pressure(relay_server: RelayServer) -> None:
    """Issue 12 item 1: near RLIMIT_NOFILE, /readyz says so (503), so a balancer stops sending traffic."""
    async with httpx.AsyncClient(timeout=30) as http:
        ready = (await http.get(f"{relay_server.url}/readyz")).json()
        assert ready["ready"] is True and ready["open_fds"] < ready["fd_limit"]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        ballast = [os.open(os.devnull, os.O_RDONLY) for _ in range(80)]  # so that 6 more is > 90 % in use
        try:
            open_now = len(os.listdir("/proc/self/fd"))
            resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 6, hard))  # > 90 % in use
            r = await http.get(f"{relay_server.url}/readyz")
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            for fd in ballast:
                os.close(fd)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["fd_limit"] == open_now + 6
        assert any("file descriptors" in p for p in body["problems"]), body
        assert (await http.get(f"{relay_server.url}/readyz")).status_code == 200
