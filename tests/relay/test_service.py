"""relay.service and the app shell: retention (TTL, sweeps beside readers, the disk quota), readiness, the
demo page, `import relay` stays light."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from podstream.emulator import Emulator
from relay.api.app import STATIC_DIR
from relay.config import RelaySettings
from relay.service import Relay
from tests.relay.conftest import (
    BACKENDS,
    Batch,
    Received,
    RelayServer,
    ScriptedWorker,
    consume,
    make_files,
    pack,
    recv,
    relay_settings,
    start_relay,
    ws_client,
)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Every test on `relay_server` runs on local disk and as a cluster replica (Redis + S3)."""
    return str(request.param)


async def test_sweep_deletes_finished_jobs_past_retention(tmp_path: Path) -> None:
    relay = Relay(RelaySettings(data_dir=tmp_path, fsync="never", retention_s=60, insecure=True))
    await relay.start()
    try:
        done = relay.store.create("old-job")
        done.record([("done", {"status": "COMPLETED", "items": 0, "errors": 0})])
        done.commit()
        running = relay.store.create("running-job")
        finished_at = done.meta["finished_at"]
        assert relay.retention.sweep(now=finished_at + 30) == []
        assert relay.retention.sweep(now=finished_at + 61) == ["old-job"]
        assert relay.store.job_ids() == ["running-job"] and relay.job("old-job") is None
        running.close()
    finally:
        await relay.stop()


def test_the_relay_serves_relay_static() -> None:
    """The page client_js/ builds into relay/static (client_js/test/build.test.js keeps it fresh), which the
    package ships (pyproject package-data)."""
    assert STATIC_DIR.resolve() == Path(__file__).resolve().parents[2] / "relay" / "static"
    assert (STATIC_DIR / "index.html").is_file() and (STATIC_DIR / "podstream-client.js").is_file()


async def test_demo_page_and_static_files(relay_server: RelayServer) -> None:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{relay_server.url}/")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/html")
        assert r.content == (STATIC_DIR / "index.html").read_bytes()
        for path in sorted(STATIC_DIR.iterdir()):
            s = await http.get(f"{relay_server.url}/static/{path.name}")
            assert s.status_code == 200 and s.content == path.read_bytes()
        assert (await http.get(f"{relay_server.url}/static/../service.py")).status_code == 404


def test_import_relay_does_not_import_torch() -> None:
    code = "import sys, relay, relay.api.app, relay.serve, relay.api.ws; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------------------ retention and quota


async def submit_and_run(
    relay: RelayServer, worker: ScriptedWorker, files: list[bytes], **body: Any
) -> tuple[int, dict[str, Any]]:
    """POST /v1/jobs (with extra body fields), the scripted worker delivers `files`; (status, answer)."""
    async with relay.http() as http:
        r = await http.post(f"{relay.url}/v1/jobs", json={"input": {}, **body})
        if r.status_code != 201:
            return r.status_code, r.json()
        created: dict[str, Any] = r.json()
    taken = await worker.take()
    for envelope in Batch(taken["id"], files, part_bytes=500_000).envelopes:
        await worker.post(taken["id"], envelope)
    await worker.done(taken["id"])
    for _ in range(400):
        store = relay.relay.job(created["id"])
        if store is not None and store.finished:
            assert store.status == "COMPLETED"
            return 201, created
        await asyncio.sleep(0.05)
    raise AssertionError("the job did not finish")


async def manifest(relay: RelayServer, job: str) -> httpx.Response:
    async with relay.http() as http:
        return await http.get(f"{relay.url}/v1/jobs/{job}")


async def test_expired_jobs_are_swept_by_the_janitor(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    relay = await start_relay(relay_settings(tmp_path, emulator, retention_s=20))  # swept every 2 s
    try:
        _, kept = await submit_and_run(relay, worker, make_files(1, 1000))
        _, short = await submit_and_run(relay, worker, make_files(1, 1000), retention_s=0.5)
        body = (await manifest(relay, short["id"])).json()
        assert body["expires_at"] == pytest.approx(body["finished_at"] + 0.5)
        default = (await manifest(relay, kept["id"])).json()
        assert default["expires_at"] == pytest.approx(default["finished_at"] + 20)
        for bad in (-1, 0, "soon", True, 10**12):
            status, answer = await submit_and_run(relay, worker, [], retention_s=bad)
            assert status == 400 and answer["error"]["code"] == "bad_retention", bad
        for _ in range(100):  # the janitor runs every second or so
            if (await manifest(relay, short["id"])).status_code == 404:
                break
            await asyncio.sleep(0.1)
        assert (await manifest(relay, short["id"])).status_code == 404
        assert relay.relay.store.job_ids() == [kept["id"]]
        assert not list((tmp_path / "data" / "trash").iterdir())
    finally:
        await relay.stop()


async def test_the_sweep_leaves_a_job_alone_while_a_subscriber_reads_it(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    relay = await start_relay(relay_settings(tmp_path, emulator, send_timeout_s=30, retention_s=60))
    try:
        files = make_files(6, 1_500_000)  # far more than loopback socket buffers hold
        _, created = await submit_and_run(relay, worker, files)
        job = created["id"]
        finished_at = relay.relay.job(job).meta["finished_at"]
        async with websockets.connect(relay.ws_url, compression=None, max_size=2**22, max_queue=1) as slow:
            await slow.send(pack({"t": "auth", "token": created["token"]}))
            assert (await recv(slow))["t"] == "welcome"
            await slow.send(pack({"t": "sub", "job": job, "from": 0}))
            await asyncio.sleep(0.3)  # it reads nothing for now: the relay is mid-replay, blocked on sending
            assert relay.relay.job(job).readers == 1
            assert relay.relay.retention.sweep(now=finished_at + 3600) == []  # expired, but being read
            got = await consume(slow, job, Received())  # it reads on and gets every byte
            assert {i: bytes(b) for i, b in got.files.items()} == dict(enumerate(files))
        for _ in range(100):
            if relay.relay.job(job).readers == 0:
                break
            await asyncio.sleep(0.05)
        assert relay.relay.retention.sweep(now=finished_at + 3600) == [job]
        assert (await manifest(relay, job)).status_code == 404
    finally:
        await relay.stop()


async def test_disk_quota_evicts_the_oldest_finished_jobs_then_refuses_items(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    # No gap recovery (recovery_attempts=0): a refused item is not lost in transit, nothing to ask a worker for.
    relay = await start_relay(
        relay_settings(tmp_path, emulator, disk_quota_bytes=1_000_000, recovery_attempts=0)
    )
    try:
        _, first = await submit_and_run(relay, worker, make_files(2, 200_000))
        _, second = await submit_and_run(relay, worker, make_files(1, 200_000))
        assert relay.relay.quota.used > 600_000
        # 400 KB more do not fit next to the 600 KB held: the oldest finished job goes, the newer stays
        files = make_files(2, 200_000)
        _, third = await submit_and_run(relay, worker, files)
        assert (await manifest(relay, first["id"])).status_code == 404
        assert (await manifest(relay, second["id"])).status_code == 200
        body = (await manifest(relay, third["id"])).json()
        assert [i["size"] for i in body["items"]] == [len(f) for f in files] and body["errors"] == []
        # an item larger than the whole quota: refused with a clear error, nothing else deleted
        big = make_files(1, 1_200_000) + make_files(1, 1000)
        _, fourth = await submit_and_run(relay, worker, big)
        body = (await manifest(relay, fourth["id"])).json()
        assert [i["item"] for i in body["items"]] == [1]
        print("ERRORS", body["errors"])
        [error] = body["errors"]
        assert error["item"] == 0 and error["code"] == "quota_exceeded" and "disk quota" in error["message"]
        assert not list(relay.relay.job(fourth["id"]).media.rglob("00000-*"))
        assert (await manifest(relay, second["id"])).status_code == 200
        assert relay.relay.quota.used <= 1_000_000
        async with relay.http() as http:
            metrics = (await http.get(f"{relay.url}/metrics")).text
        assert 'podstream_relay_jobs_deleted_total{reason="quota"} 1.0' in metrics
        assert "podstream_relay_quota_refused_total 1.0" in metrics
    finally:
        await relay.stop()


async def test_readyz(tmp_path: Path, emulator: Emulator) -> None:
    relay = await start_relay(relay_settings(tmp_path, emulator))
    try:
        async with httpx.AsyncClient() as http:
            r = await http.get(f"{relay.url}/readyz")
            assert r.status_code == 200 and r.json()["ready"] is True
            relay.relay.quota.limit = 1  # full
            relay.relay.quota.reserve("x", 1)
            r = await http.get(f"{relay.url}/readyz")
            assert r.status_code == 503 and r.json()["problems"] == ["the disk quota is full"]
            relay.relay.quota.limit = 0
            relay.relay.quota.release("x", 1)
            await relay.relay.drain()  # shutting down: the load balancer stops sending
            r = await http.get(f"{relay.url}/readyz")
            assert r.status_code == 503 and "shutting down" in r.json()["problems"][0]
            assert (await http.get(f"{relay.url}/healthz")).status_code == 200  # alive all the same
    finally:
        await relay.stop()


# ------------------------------------------------------------------------------ expected item count


def test_expected_items_are_counted_from_the_input() -> None:
    from relay.service import expected_items

    items = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}]
    assert expected_items({"task": "t", "items": items}) == 3
    assert expected_items({"task": "t", "items": items, "params": {"num_images": 4}}) == 12
    for odd in ({"num_images": 0}, {"num_images": True}, {"num_images": "2"}, "x"):
        assert expected_items({"task": "t", "items": items, "params": odd}) == 3
    unknown: dict[str, Any]
    for unknown in (
        {"prompt": "a cat", "num_images": 4},
        {"resend": {"job": "x"}},
        {"items": []},
        {"items": 3},
    ):
        assert expected_items(unknown) is None


async def test_the_expected_item_count_is_shown_in_the_manifest_the_list_and_subscribed(
    relay_server: RelayServer, worker: ScriptedWorker, emulator: Emulator
) -> None:
    body = {"task": "text-to-image", "items": [{"prompt": "a"}, {"prompt": "b"}], "params": {"num_images": 2}}
    async with relay_server.http() as http:
        created = (await http.post(f"{relay_server.url}/v1/jobs", json={"input": body})).json()
        job = created["id"]
        other = (await http.post(f"{emulator.endpoint_url}/run", json={"input": {"prompt": "x"}})).json()[
            "id"
        ]
        assert (await http.post(f"{relay_server.url}/v1/jobs/{other}/attach")).status_code == 201
        manifest = (await http.get(f"{relay_server.url}/v1/jobs/{job}")).json()
        listed = {j["id"]: j for j in (await http.get(f"{relay_server.url}/v1/jobs")).json()["jobs"]}
    assert manifest["expected_items"] == 4 and listed[job]["expected_items"] == 4
    assert listed[other]["expected_items"] is None  # attached: the relay never saw its input
    async with ws_client(relay_server.ws_url, created["token"]) as ws:
        await ws.send(pack({"t": "sub", "job": job, "from": 0}))
        subscribed = await recv(ws)
    assert subscribed["t"] == "subscribed" and subscribed["expected_items"] == 4
    reopened = relay_server.relay.store.read_meta(job)  # kept in job.json: it survives a restart
    assert reopened["expected_items"] == 4
