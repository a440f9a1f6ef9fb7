"""`PUT /v1/uploads/{job}/{item}` through real HTTP: uploaded items journaled like streamed ones (and counted
in the relay's metrics), every bad upload refused with its documented status and nothing written outside the
job's directory, and a real worker process uploading (and falling back to streaming when the relay refuses a
file)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from podstream import wire
from podstream.emulator import Emulator, EmulatorConfig
from relay.api.auth import generate_key, hash_key
from relay.api.uploads import TempFile
from tests.relay.conftest import (
    API_KEY,
    Received,
    RelayServer,
    ScriptedWorker,
    consume,
    pack,
    recv,
    relay_settings,
    sha,
    start_relay,
    ws_client,
)
from tests.relay.file_worker import file_bytes
from worker.upload import UploadConfig, Uploader

ROOT = Path(__file__).resolve().parents[3]
UPLOAD_KEY = generate_key()
READ_KEY = generate_key()
KEYS = f"{hash_key(API_KEY)},uploader={hash_key(UPLOAD_KEY)}/upload,reader={hash_key(READ_KEY)}/jobs:read"


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A heartbeat grace long enough for workers that never ping (the scripted one; SDK workers without an
    API key)."""
    async with Emulator(EmulatorConfig.for_tests(heartbeat_grace_s=60.0)).serve(
        host="127.0.0.1", port=0
    ) as emu:
        yield emu


def settings(tmp_path: Path, emu: Emulator, **changes: Any) -> Any:
    return relay_settings(tmp_path, emu, api_keys=KEYS, **changes)


@pytest.fixture
async def relay(tmp_path: Path, emulator: Emulator) -> AsyncIterator[RelayServer]:
    # No gap recovery: a job these tests end without a manifest would wait for a resend nobody answers.
    server = await start_relay(settings(tmp_path, emulator, max_upload_bytes=10_000, recovery_attempts=0))
    try:
        yield server
    finally:
        await server.stop()


async def submit(server: RelayServer) -> str:
    async with server.http() as http:
        answer = await http.post(f"{server.url}/v1/jobs", json={"input": {"x": 1}})
        assert answer.status_code == 201, answer.text
        job: str = answer.json()["id"]
        return job


async def bytes_in(server: RelayServer) -> dict[str, float]:
    """`podstream_relay_bytes_in_total` by source, scraped from `GET /metrics`."""
    async with server.http() as http:
        answer = await http.get(f"{server.url}/metrics")
        assert answer.status_code == 200, answer.text
    return {
        sample.labels["source"]: sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
        if sample.name == "podstream_relay_bytes_in_total"
    }


def put(server: RelayServer, job: str, item: int, data: bytes) -> str:
    """The worker's own uploader (sync, as the handler's encode thread runs it)."""
    uploader = Uploader(UploadConfig(url=server.url, key=UPLOAD_KEY, attempts=1))
    try:
        return uploader.upload(job, item, data, mime="video/mp4", sha256=sha(data))
    finally:
        uploader.close()


async def test_an_uploaded_item_is_journaled_like_a_streamed_one(
    relay: RelayServer, worker: ScriptedWorker
) -> None:
    job = await submit(relay)
    await worker.take()
    streamed, uploaded = os.urandom(3000), os.urandom(9000)
    url = await asyncio.to_thread(put, relay, job, 1, uploaded)
    assert url == f"{relay.url}/v1/jobs/{job}/media/1"
    assert (await bytes_in(relay)).get("upload") == len(uploaded)
    store = relay.relay.job(job)
    assert [p.name for p in (store.dir / "uploads").iterdir()] == [f"00001-{sha(uploaded)}.bin"]

    envs = wire.Envelopes(job)
    envelopes = list(envs.parts(0, streamed, mime="video/mp4", id="a", part_bytes=1000))
    envelopes.append(envs.ref(1, url=url, mime="video/mp4", size=len(uploaded), sha256=sha(uploaded), id="b"))
    envelopes += envs.manifest(
        [
            wire.ManifestItem(0, "a", "ok", "video/mp4", 3000, sha(streamed), 3),
            wire.ManifestItem(1, "b", "ref", "video/mp4", 9000, sha(uploaded), 0, url),
        ]
    )
    for envelope in envelopes:
        await worker.post(job, envelope)
    await worker.done(job)

    async with ws_client(relay.ws_url, token=relay.token(job)) as ws:
        await ws.send(pack({"t": "sub", "job": job, "from": 0}))
        assert (await recv(ws))["t"] == "subscribed"
        got = await consume(ws, job, Received())
    items = [r for r in got.records if r["k"] == "item"]
    assert [bytes(got.files[0]), bytes(got.files[1])] == [streamed, uploaded]  # both as chunk frames
    first, second = ({k: v for k, v in r.items() if k not in ("seq", "url")} for r in items)
    assert (first.pop("delivery"), second.pop("delivery")) == ("stream", "upload")
    assert first == {"t": "ev", "job": job, "k": "item", "item": 0, "id": "a", "mime": "video/mp4", "size": 3000,
                     "sha256": sha(streamed)}  # fmt: skip
    assert second == {**first, "item": 1, "id": "b", "size": 9000, "sha256": sha(uploaded)}
    assert [r["url"].split("?")[0] for r in items] == [f"/v1/jobs/{job}/media/0", f"/v1/jobs/{job}/media/1"]
    assert [r["k"] for r in got.records if r["k"] == "error"] == []

    async with relay.http() as http:
        manifest = (await http.get(f"{relay.url}/v1/jobs/{job}")).json()
        assert [i.get("delivery") for i in manifest["items"]] == ["stream", "upload"]
        assert (await http.get(manifest["items"][1]["url"])).content == uploaded
    assert list((store.dir / "uploads").iterdir()) == []  # claimed: moved into the media directory
    # Each byte counted once, under the way it came: claiming the upload does not count it again.
    assert await bytes_in(relay) == {"runpod": len(streamed), "upload": len(uploaded)}


# ------------------------------------------------------------------------------------------ bad uploads


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


async def raw_put(port: int, path: str, headers: dict[str, str], body: bytes) -> int:
    """A PUT with the path sent exactly as given (HTTP clients normalize `..` away)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [
            f"PUT {path} HTTP/1.1",
            "Host: 127.0.0.1",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        head += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return int(status_line.split()[1])
    finally:
        writer.close()


async def test_bad_uploads_are_refused_and_touch_nothing(
    tmp_path: Path, relay: RelayServer, worker: ScriptedWorker
) -> None:
    done = await submit(relay)
    assert (await worker.take())["id"] == done
    await worker.done(done)
    job = await submit(relay)  # known to the relay, not finished
    async with relay.http() as http:
        deadline = (
            time.monotonic() + 60
        )  # the second job's stream ends (its recovery finds nothing to ask for)
        while not (await http.get(f"{relay.url}/v1/jobs/{done}")).json()["finished"]:
            assert time.monotonic() < deadline, "the finished job never showed as finished"
            await asyncio.sleep(0.05)
        # and the second job's first record (its status) is written before the files are listed below
        events = f"{relay.url}/v1/jobs/{job}/events"
        first = (await http.get(events, params={"format": "json", "wait": 30_000})).json()["events"]
        assert first and first[0]["k"] == "status", first
    (tmp_path / "outside.bin").write_bytes(b"keep")
    (tmp_path / "data" / "jobs" / "victim").write_bytes(b"keep")
    before = tree(tmp_path)

    data = b"x" * 100
    good = {"authorization": f"Bearer {UPLOAD_KEY}", "x-podstream-sha256": sha(data)}
    url = f"{relay.url}/v1/uploads/{job}/0"

    async def status(target: str, headers: dict[str, str], content: Any = data) -> tuple[int, str]:
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.put(target, headers=headers, content=content)
            return answer.status_code, answer.json()["error"]["code"]

    assert await status(url, {"x-podstream-sha256": sha(data)}) == (401, "unauthorized")
    assert await status(url, {**good, "authorization": "Bearer psk_not-a-key"}) == (401, "unauthorized")
    assert await status(url, {**good, "authorization": f"Bearer {READ_KEY}"}) == (403, "forbidden")
    assert await status(url, {"authorization": f"Bearer {UPLOAD_KEY}"}) == (400, "bad_sha256")
    assert await status(url, {**good, "x-podstream-sha256": "../../etc"}) == (400, "bad_sha256")
    assert await status(url, {**good, "x-podstream-sha256": sha(b"other")}) == (422, "sha256_mismatch")
    big = b"x" * 10_001
    assert await status(url, {**good, "x-podstream-sha256": sha(big)}, big) == (413, "too_large")

    async def chunked() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"y" * 4000

    assert await status(url, good, chunked()) == (413, "too_large")  # no Content-Length: cut off at the cap
    assert await status(f"{relay.url}/v1/uploads/no-such-job/0", good) == (404, "not_found")
    assert await status(f"{relay.url}/v1/uploads/{done}/0", good) == (409, "job_finished")

    # Path traversal and odd names, sent byte for byte.
    bad_paths = {
        "/v1/uploads/../0": 400, "/v1/uploads/%2e%2e/0": 400, "/v1/uploads/%2E%2E/0": 400,
        "/v1/uploads/a%00b/0": 400, f"/v1/uploads/{job}%00/0": 400, "/v1/uploads/.hidden/0": 400,
        "/v1/uploads/%2Fetc%2Fpasswd/0": 404, "/v1/uploads//etc/passwd/0": 404,
        f"/v1/uploads/{job}/..": 400, f"/v1/uploads/{job}/%2e%2e": 400, f"/v1/uploads/{job}/-1": 400,
        f"/v1/uploads/{job}/1e3": 400, f"/v1/uploads/{job}/0x1": 400, f"/v1/uploads/{job}/99999999": 400,
        f"/v1/uploads/{job}/0%00": 400, f"/v1/uploads/{job}/..%2F..%2Fvictim": 404,
        f"/v1/uploads/{job}/%2Fetc%2Fpasswd": 404, f"/v1/uploads/{job}/0/../../victim": 404,
    }  # fmt: skip
    for path, expected in bad_paths.items():
        assert await raw_put(relay.port, path, good, data) == expected, path

    # Not a byte written, not a temp file left behind: at most the job's (empty) uploads directory appeared.
    uploads = f"data/jobs/{job}/uploads"
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if k not in (uploads, f"data/jobs/{job}")} == {
        k: v for k, v in before.items() if k != f"data/jobs/{job}"
    }
    assert not any(k.startswith(uploads + "/") for k in after)
    # The good request itself works, and writes only inside the job's directory.
    assert await raw_put(relay.port, f"/v1/uploads/{job}/0", good, data) == 201
    assert set(tree(tmp_path)) - set(after) == {f"{uploads}/00000-{sha(data)}.bin"}


# ------------------------------------------------------------------------------ a real worker process


async def test_a_worker_uploads_to_the_relay_and_streams_what_the_relay_refuses(
    tmp_path: Path, emulator: Emulator
) -> None:
    emu = emulator
    server = await start_relay(settings(tmp_path, emu, max_upload_bytes=20_000))
    try:
        env = {
            "PODSTREAM_UPLOAD_URL": server.url, "PODSTREAM_UPLOAD_KEY": UPLOAD_KEY, "PODSTREAM_UPLOAD_BACKOFF_S": "0.05",
            "PODSTREAM_CACHE_DIR": str(tmp_path / "cache"),
        }  # fmt: skip
        emu.spawn_workers(
            1, [sys.executable, "-m", "tests.relay.file_worker"], env=env, cwd=ROOT, log_dir=tmp_path
        )
        sizes = [3000, 50_000, 8000]  # the 50 kB file is over the relay's cap: 413, streamed instead
        items = [{"prompt": str(size), "id": f"v{i}"} for i, size in enumerate(sizes)]
        body = {"input": {"task": "text-to-video", "items": items, "delivery": "upload"}}
        async with server.http() as http:
            job = (await http.post(f"{server.url}/v1/jobs", json=body)).json()["id"]
            for _ in range(600):
                manifest = (await http.get(f"{server.url}/v1/jobs/{job}")).json()
                if manifest["finished"]:
                    break
                await asyncio.sleep(0.1)
            logs = await asyncio.to_thread(lambda: "\n".join(p.read_text() for p in tmp_path.glob("*.log")))
            assert manifest["status"] == "COMPLETED" and manifest["errors"] == [], logs[-5000:]
            assert [i.get("delivery") for i in manifest["items"]] == ["upload", "stream", "upload"]
            for entry, size in zip(manifest["items"], sizes, strict=True):
                expected = file_bytes(entry["item"], size)
                assert entry["sha256"] == hashlib.sha256(expected).hexdigest()
                assert (await http.get(entry["url"])).content == expected
        assert "HTTP 413" in logs and "streaming item 1 instead" in logs
    finally:
        await server.stop()


# ------------------------------------------------------------------------------------------ unclaimed uploads


async def test_uploads_no_item_claims_are_swept(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    """A worker PUT files whose `ref`s never came: the retention sweep deletes them after `upload_grace_s`
    (at once when the job has ended); a claimed upload and the job's media are left alone."""
    server = await start_relay(settings(tmp_path, emulator, recovery_attempts=0, upload_grace_s=600))
    try:
        running, ended = await submit(server), await submit(server)
        await worker.take()
        await worker.take()
        orphan, claimed, late = os.urandom(2000), os.urandom(3000), os.urandom(4000)
        await asyncio.to_thread(put, server, running, 0, orphan)
        url = await asyncio.to_thread(put, server, ended, 1, claimed)
        await asyncio.to_thread(put, server, ended, 2, late)  # its ref never comes
        envs = wire.Envelopes(ended)
        await worker.post(
            ended, envs.ref(1, url=url, mime="video/mp4", size=3000, sha256=sha(claimed), id="b")
        )
        await worker.done(ended)
        for _ in range(400):
            if server.relay.job(ended).finished:
                break
            await asyncio.sleep(0.05)
        uploads_of = {job: server.relay.job(job).dir / "uploads" for job in (running, ended)}
        assert [p.name for p in uploads_of[ended].iterdir()] == [f"00002-{sha(late)}.bin"]

        await server.relay.retention.sweep_once()  # the janitor's round: the ended job's orphan goes now
        assert list(uploads_of[ended].iterdir()) == []
        assert [p.name for p in uploads_of[running].iterdir()] == [f"00000-{sha(orphan)}.bin"]  # in its grace
        assert server.relay.retention.sweep_uploads(now=time.time() + 601) == 1  # past it
        assert list(uploads_of[running].iterdir()) == []
        async with server.http() as http:  # the claimed one is the job's item, untouched
            manifest = (await http.get(f"{server.url}/v1/jobs/{ended}")).json()
            assert (await http.get(manifest["items"][0]["url"])).content == claimed
    finally:
        await server.stop()


# ---- TempFile (the spool file both upload routes receive a body into)


def test_a_temp_file_writes_chunks_as_given_and_hashes_them(tmp_path: Path) -> None:
    chunks = [os.urandom(n) for n in (1, 0, 70_000, 3, 65_536)] * 300  # more buffers than one writev takes
    temp = TempFile(tmp_path / "spool", lazy=True, parents=True)
    assert not temp.opened and not (tmp_path / "spool").exists()  # lazy: nothing made until the first write
    temp.writev(chunks[:7])
    temp.writev(chunks[7:])
    assert temp.opened and temp.size == sum(map(len, chunks))
    final = tmp_path / "kept"
    temp.keep(final, fsync=True)
    assert final.read_bytes() == b"".join(chunks)
    assert temp.hash.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert list((tmp_path / "spool").iterdir()) == []


def test_a_temp_file_never_written_leaves_nothing(tmp_path: Path) -> None:
    temp = TempFile(tmp_path, lazy=True)
    temp.discard()
    assert list(tmp_path.iterdir()) == []
    eager = TempFile(tmp_path / "made")  # not lazy: made at once (its directory too, when missing)
    assert eager.opened and eager.path.exists()
    eager.discard()
    assert list((tmp_path / "made").iterdir()) == []
