"""Relay replicas in cluster mode, end to end: real uvicorn replicas sharing a real `redis-server` and an S3
server (moto; the media and upload tests on s3rver too), the RunPod emulator and a scripted worker; real
websocket clients and HTTP.

(Through separate processes, with kills, Redis restarts and an unreachable bucket: test_replicas.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import hmac
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import psutil
import pytest

from podstream import wire
from podstream.emulator import Emulator
from relay import serve
from relay.api.app import create_app
from relay.api.auth import generate_key, hash_key
from relay.api.bucket_media import byte_range
from relay.storage.cluster.health import DEADLINE_S
from relay.storage.cluster.replica import HEALTH_INTERVAL_S
from relay.storage.cluster.settings import ClusterSettings
from tests.relay.conftest import (
    API_KEY,
    Batch,
    Received,
    RelayServer,
    ScriptedWorker,
    consume,
    make_files,
    pack,
    recv,
    relay_settings,
    sha,
    ws_client,
)
from tests.relay.storage.conftest import AWS_ENV, S3_SERVERS, RedisServer, S3Server, stop
from worker.upload import UploadConfig, Uploader

Start = Callable[..., Any]

#: The replicas' lease TTL. Their leases are renewed every third of it from the test's own event loop, which
#: also runs the other replica, the S3 server's threads and the worker: at 2 s a loaded machine let a lease
#: expire mid-test (another replica took the job, and items drained by the first were lost). No test here
#: waits for a lease to run out.
LEASE_TTL_S = 10.0


async def start_replica(settings: Any, cluster: ClusterSettings) -> RelayServer:
    app = create_app(settings, cluster=cluster)
    server = serve.RelayServer(
        serve.uvicorn_config(app, settings, port=0, log_level="warning"), app.state.relay
    )
    task = asyncio.create_task(server.serve())
    for _ in range(1000):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
        raise AssertionError("replica did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    return RelayServer(settings, server, task, port, app)


@pytest.fixture
async def replicas(
    tmp_path: Path, emulator: Emulator, redis_server: RedisServer, s3_server: S3Server
) -> AsyncIterator[Start]:
    """Starts replicas on the same Redis and bucket (each its own data directory); stops them all."""
    started: list[RelayServer] = []

    async def start(name: str, **changes: Any) -> RelayServer:
        settings = relay_settings(tmp_path / name, emulator, **changes)
        cluster = ClusterSettings(
            redis_url=redis_server.url, media_url=f"s3://{s3_server.bucket}/relay",
            s3_endpoint_url=s3_server.endpoint_url, replica_id=name, lease_ttl_s=LEASE_TTL_S,
        )  # fmt: skip
        replica = await start_replica(settings, cluster)
        started.append(replica)
        return replica

    try:
        yield start
    finally:
        for replica in reversed(started):
            with contextlib.suppress(Exception):
                await replica.stop()


async def submit(relay: RelayServer) -> str:
    async with relay.http() as http:
        r = await http.post(f"{relay.url}/v1/jobs", json={"input": {}})
        assert r.status_code == 201, r.text
        job: str = r.json()["id"]
        return job


async def subscriber(
    relay: RelayServer, job: str, token: str | None, subscribed: asyncio.Event | None = None
) -> Received:
    """Everything of `job` from seq 0 on one websocket; `subscribed` is set once the relay said `subscribed`.
    Within 120 s: a job that never ends fails the test instead of hanging it (pings keep the socket busy)."""
    async with asyncio.timeout(120), ws_client(relay.ws_url, token) as ws:
        await ws.send(pack({"t": "sub", "job": job, "from": 0}))
        frame = await recv(ws)
        assert frame["t"] == "subscribed", frame
        if subscribed is not None:
            subscribed.set()
        return await consume(ws, job, Received(), seconds=30)


async def run_job(worker: ScriptedWorker, job: str, files: list[bytes]) -> None:
    taken = await worker.take()
    for envelope in Batch(taken["id"], files).envelopes:
        await worker.post(job, envelope)
    await worker.done(job)


async def test_a_job_submitted_on_one_replica_is_followed_live_on_another(
    replicas: Start, worker: ScriptedWorker, emulator: Emulator
) -> None:
    a, b = await replicas("a"), await replicas("b")
    job = await submit(a)
    assert a.relay.polling(job) and not b.relay.polling(job), "the submitting replica holds the lease"
    token = a.token(job)  # minted by one replica, accepted by the other (the same secret)
    files = make_files(5, 150_000)
    on_b, on_a = asyncio.Event(), asyncio.Event()
    live_b = asyncio.ensure_future(subscriber(b, job, token, on_b))
    live_a = asyncio.ensure_future(subscriber(a, job, token, on_a))
    # subscribed before the first envelope: B follows the job live from Redis
    await asyncio.wait_for(asyncio.gather(on_b.wait(), on_a.wait()), 30)
    await run_job(worker, job, files)
    for got in await asyncio.gather(live_b, live_a):
        assert got.records[-1]["k"] == "done" and got.records[-1]["status"] == "COMPLETED"
        assert got.seqs == list(range(1, len(got.seqs) + 1)), "every record once, in order"
        assert [bytes(got.files[i]) for i in range(len(files))] == files
    late = await subscriber(b, job, token)  # replay of the finished job from Redis and the bucket
    assert [sha(late.files[i]) for i in range(len(files))] == [sha(f) for f in files]
    assert not b.relay.polling(job)
    stream = emulator.stats()["routes"]["stream"]
    assert stream["max_in_flight"] == 1, "one /stream long-poll at a time: one poller for the job"


async def run_typed_job(worker: ScriptedWorker, job: str, files: list[tuple[bytes, str]]) -> None:
    """A job whose items have these (bytes, mime)."""
    await worker.take()
    envs = wire.Envelopes(job)
    entries = []
    for i, (data, mime) in enumerate(files):
        for envelope in envs.parts(i, data, mime=mime, id=f"f{i}", part_bytes=64 * 1024):
            await worker.post(job, envelope)
        parts = wire.part_count(len(data), 64 * 1024)
        entries.append(wire.ManifestItem(i, f"f{i}", "ok", mime, len(data), sha(data), parts))
    for envelope in envs.manifest(entries):
        await worker.post(job, envelope)
    await worker.done(job)


def sigv4_method(url: str) -> str | None:
    """The method (GET or HEAD) a presigned SigV4 URL is good for, checked as AWS S3 checks it (the method is
    part of what is signed; neither test S3 server checks that), or None when its signature is good for
    neither. Presigned with the test credentials, `host` the only signed header, the payload unsigned."""
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    signature = params.pop("X-Amz-Signature")
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and params["X-Amz-SignedHeaders"] == "host"
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params.items()))
    scope = params["X-Amz-Credential"].split("/", 1)[1]
    key = ("AWS4" + AWS_ENV["AWS_SECRET_ACCESS_KEY"]).encode()
    for part in scope.split("/"):  # date, region, service, aws4_request
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    for method in ("GET", "HEAD"):
        canonical = "\n".join(
            [method, parts.path, query, f"host:{parts.netloc}\n", "host", "UNSIGNED-PAYLOAD"]
        )
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        to_sign = "\n".join(["AWS4-HMAC-SHA256", params["X-Amz-Date"], scope, digest])
        if hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest() == signature:
            return method
    return None


@pytest.mark.parametrize("s3_kind", S3_SERVERS)
async def test_media_from_the_bucket_whole_by_range_and_by_redirect(
    replicas: Start, worker: ScriptedWorker
) -> None:
    """On both S3 servers: streamed by the replica (whole, by range) or, with --media-redirect, a SigV4
    presigned URL whose download is the item's bytes (the manifest's sha256) with the item's Content-Type.
    With the redirect, the relay answers only a 304 for its own ETag itself; HEAD, Range (even one past the
    end) all get the 302, and the bucket answers them with its own ETag (the MD5), 206 and 416."""
    a = await replicas("a")
    b = await replicas("b", media_redirect=True)
    job = await submit(a)
    files = make_files(2, 300_000)
    await run_typed_job(worker, job, [(files[0], "video/mp4"), (files[1], "image/png")])
    async with a.http() as http:
        for _ in range(200):
            manifest = (await http.get(f"{a.url}/v1/jobs/{job}")).json()
            if manifest.get("finished"):
                break
            await asyncio.sleep(0.05)
        url = manifest["items"][1]["url"].removeprefix(a.url)  # signed, absolute
        url = url.split("?")[0]
        whole = await http.get(f"{a.url}{url}")
        assert whole.status_code == 200 and whole.content == files[1]
        assert whole.headers["content-type"] == "image/png"
        assert whole.headers["etag"] == f'"{sha(files[1])}"'
        part = await http.get(f"{a.url}{url}", headers={"range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == files[1][1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{len(files[1])}"
        tail = await http.get(f"{a.url}{url}", headers={"range": "bytes=-10"})
        assert tail.status_code == 206 and tail.content == files[1][-10:]
        head = await http.head(f"{a.url}{url}")
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(files[1])
        missing = await http.get(f"{a.url}/v1/jobs/{job}/media/7")
        assert missing.status_code == 404
    async with b.http() as http:  # --media-redirect: 302 to a presigned URL of the object
        redirect = await http.get(f"{b.url}{url}")
        assert redirect.status_code == 302
        location = redirect.headers["location"]
        assert location.startswith(a.relay.store.cluster.media.client.meta.endpoint_url)
        assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in location and "X-Amz-Signature=" in location
        first = (await http.get(f"{b.url}/v1/jobs/{job}/media/0")).headers["location"]
        cached = await http.get(f"{b.url}{url}", headers={"if-none-match": f'"{sha(files[1])}"'})
        assert cached.status_code == 304 and "location" not in cached.headers, "the relay's own ETag: 304"
        sent_on = {
            "head": await http.head(f"{b.url}{url}"),
            "range": await http.get(f"{b.url}{url}", headers={"range": "bytes=1000-1999"}),
            "past the end": await http.get(f"{b.url}{url}", headers={"range": f"bytes={len(files[1])}-"}),
            "another etag": await http.get(f"{b.url}{url}", headers={"if-none-match": '"not-this"'}),
        }
        for what, answer in sent_on.items():
            assert answer.status_code == 302, what
            assert sigv4_method(answer.headers["location"]) == ("HEAD" if what == "head" else "GET"), what
        assert sigv4_method(location) == "GET"
    async with httpx.AsyncClient() as plain:  # the presigned URL is the grant: no relay key needed
        direct = await plain.get(location)
        assert direct.status_code == 200 and direct.content == files[1]
        assert sha(direct.content) == manifest["items"][1]["sha256"]
        assert direct.headers["content-type"] == "image/png", "the object has the item's type"
        # What a client that follows the 302 gets: the bucket's own ETag (the MD5), Range and 416, and a
        # HEAD that the URL it was sent to allows.
        assert direct.headers["etag"].strip('"') == hashlib.md5(files[1]).hexdigest()
        head = await plain.head(sent_on["head"].headers["location"])
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(files[1])
        assert head.headers["content-type"] == "image/png"
        ranged = await plain.get(sent_on["range"].headers["location"], headers={"range": "bytes=1000-1999"})
        assert ranged.status_code == 206 and ranged.content == files[1][1000:2000]
        past = await plain.get(location, headers={"range": f"bytes={len(files[1])}-"})
        assert past.status_code == 416
        video = await plain.get(first)
        assert video.content == files[0] and video.headers["content-type"] == "video/mp4"
        unauthorized = await plain.get(f"{b.url}{url}")
        assert unauthorized.status_code == 401, "the redirect is only given to an authorized request"


async def test_readyz_is_503_while_redis_is_down(replicas: Start, redis_server: RedisServer) -> None:
    a = await replicas("a")
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{a.url}/readyz")).status_code == 200
        stop(redis_server.process)
        for _ in range(100):
            answer = await http.get(f"{a.url}/readyz")
            if answer.status_code == 503:
                break
            await asyncio.sleep(0.1)
        assert answer.status_code == 503
        assert any("Redis" in problem for problem in answer.json()["problems"]), answer.json()
        assert (await http.get(f"{a.url}/healthz")).status_code == 200, "alive, only not ready"


async def readyz_until(relay: RelayServer, status: int, seconds: float) -> tuple[float, dict[str, Any]]:
    """Poll /readyz until it answers `status`: (seconds it took, its body)."""
    start = time.monotonic()
    async with httpx.AsyncClient(timeout=seconds) as http:
        while True:
            answer = await http.get(f"{relay.url}/readyz")
            took = time.monotonic() - start
            if answer.status_code == status:
                return took, answer.json()
            assert took < seconds, f"/readyz still {answer.status_code} after {seconds} s: {answer.text}"
            await asyncio.sleep(0.1)


def s3rver_process(s3_server: S3Server) -> psutil.Process:
    """The s3rver process behind `s3_server` (a child of this test process, found by its port)."""
    port = s3_server.endpoint_url.rsplit(":", 1)[1]
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            command = child.cmdline()
            if any("s3rver" in part for part in command) and port in command:
                return child
    raise AssertionError("no s3rver process")


async def test_readyz_is_503_within_seconds_of_redis_hanging_and_200_once_it_answers(
    replicas: Start, redis_server: RedisServer
) -> None:
    """A Redis that accepts connections and never answers (SIGSTOP) is not ready within the probe's deadline,
    not after the clients' 30 s timeouts and retries; ready again soon after it answers (SIGCONT)."""
    a = await replicas("a")
    await readyz_until(a, 200, 10)
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        took, body = await readyz_until(a, 503, 15)
        assert took < HEALTH_INTERVAL_S + DEADLINE_S + 2, took
        assert any("Redis" in p for p in body["problems"]), body
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(f"{a.url}/healthz")).status_code == 200, "alive, only not ready"
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    took, _ = await readyz_until(a, 200, 15)
    assert took < HEALTH_INTERVAL_S + DEADLINE_S + 2, took


@pytest.mark.parametrize("s3_kind", ["s3rver"])
async def test_readyz_is_503_within_seconds_of_the_bucket_hanging_and_200_once_it_answers(
    replicas: Start, s3_server: S3Server
) -> None:
    a = await replicas("a")
    await readyz_until(a, 200, 10)
    s3rver = s3rver_process(s3_server)
    s3rver.suspend()  # SIGSTOP: connections are accepted, nothing is answered
    try:
        took, body = await readyz_until(a, 503, 15)
        assert took < HEALTH_INTERVAL_S + DEADLINE_S + 2, took
        assert any("bucket" in p for p in body["problems"]), body
    finally:
        s3rver.resume()
    took, _ = await readyz_until(a, 200, 15)
    assert took < HEALTH_INTERVAL_S + DEADLINE_S + 2, took


async def post_item(worker: ScriptedWorker, envs: wire.Envelopes, job: str, item: int, data: bytes) -> None:
    for envelope in envs.parts(item, data, mime="video/mp4", id=f"clip{item}", part_bytes=4096):
        await worker.post(job, envelope)


async def heartbeat(worker: ScriptedWorker, job: str) -> None:
    """The worker's pings (the SDK's; the scripted worker sends none by itself)."""
    while True:
        await worker.http.get(f"{worker.base}/ping/{worker.pod}", params={"job_id": job})
        await asyncio.sleep(0.5)


async def until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        await asyncio.sleep(0.05)


async def test_a_replica_that_cannot_write_its_spool_gives_its_jobs_to_another_and_is_not_ready(
    replicas: Start, worker: ScriptedWorker, caplog: pytest.LogCaptureFixture
) -> None:
    """A spool that refuses files (here a file where its directory was: every creation fails, as on a full
    disk) makes the polling replica stop, give the job's lease back at once and report not ready, instead
    of renewing the lease while its poller fails; the other replica takes the job and ends it. The item the
    first replica drained but could not store is reported, never lost silently."""
    caplog.set_level(logging.WARNING)
    a = await replicas("a", recovery_attempts=0)
    b = await replicas("b", recovery_attempts=0)
    job = await submit(a)
    assert a.relay.polling(job)
    await worker.take()
    pinging = asyncio.create_task(heartbeat(worker, job))  # the worker stays alive while nothing is posted
    envs, files = wire.Envelopes(job), make_files(3, 10_000)
    await post_item(worker, envs, job, 0, files[0])
    await until(lambda: 0 in a.relay.job(job).items, 20, "item 0 stored by A")
    spool = a.settings.data_dir / "spool"
    spool.rename(spool.with_name("spool.away"))
    spool.write_bytes(b"")
    try:
        await post_item(worker, envs, job, 1, files[1])
        await until(lambda: "cannot write the spool" in (a.relay.not_ready() or ""), 15, "A says why")
        _took, body = await readyz_until(a, 503, 1)
        assert any("cannot write the spool" in p for p in body["problems"]), body
        await until(lambda: b.relay.polling(job), 10, "B polls the job")
        assert not a.relay.polling(job) and not a.relay.replica.claimer.held, "A gave its lease back"
        async with httpx.AsyncClient(timeout=5) as http:
            assert (await http.get(f"{b.url}/readyz")).status_code == 200
        await post_item(worker, envs, job, 2, files[2])
        entries = [
            wire.ManifestItem(i, f"clip{i}", "ok", "video/mp4", len(f), sha(f), wire.part_count(len(f), 4096))
            for i, f in enumerate(files)
        ]  # fmt: skip
        for envelope in envs.manifest(entries):
            await worker.post(job, envelope)
        await worker.done(job)
        got = await subscriber(a, job, a.token(job))  # A still serves its subscribers, from Redis
        assert got.records[-1]["k"] == "done"
        assert sorted(got.files) == [0, 2] and bytes(got.files[2]) == files[2]
        errors = [r for r in got.records if r["k"] == "error"]
        # What A drained but could not store is reported, never lost silently: the seqs as a gap, item 1 as
        # missing (or incomplete, where B received its later parts).
        assert {r["code"] for r in errors} <= {"gap", "missing_item", "incomplete"}, errors
        assert any(r["code"] == "gap" for r in errors), errors
        assert {r.get("item") for r in errors if r["code"] != "gap"} == {1}, errors
        assert not any(r["code"] == "poller_crashed" for r in errors), "not a crash: A stopped polling"
    finally:
        pinging.cancel()
        spool.unlink(missing_ok=True)
        spool.with_name("spool.away").rename(spool)
    await readyz_until(a, 200, 3 * LEASE_TTL_S + HEALTH_INTERVAL_S + DEADLINE_S + 2)
    gc.collect()
    await asyncio.sleep(0.1)
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_the_disk_quota_bounds_the_spool_of_a_replica(
    replicas: Start, worker: ScriptedWorker, s3_server: S3Server
) -> None:
    """In cluster mode the disk quota counts what the replica holds on its own disk: items (and worker
    uploads) while they are spooled on their way to the bucket. An item that does not fit is refused
    (`quota_exceeded`, nothing uploaded); each item's bytes count until it is in the bucket, then no more."""
    upload_key = generate_key()
    keys = f"{hash_key(API_KEY)},uploader={hash_key(upload_key)}/upload"
    a = await replicas("a", disk_quota_bytes=5000, api_keys=keys)
    job = await submit(a)
    await worker.take()
    files = [os.urandom(9000), os.urandom(3000), os.urandom(4500)]
    envs = wire.Envelopes(job)
    for i, data in enumerate(files):
        await post_item(worker, envs, job, i, data)
    await until(lambda: 2 in a.relay.job(job).items, 20, "item 2 stored")
    assert a.relay.quota.used == 0
    uploaded = os.urandom(4000)
    uploader = Uploader(UploadConfig(url=a.url, key=upload_key, attempts=1))
    try:
        await asyncio.to_thread(uploader.upload, job, 3, uploaded, mime="video/mp4", sha256=sha(uploaded))
    finally:
        uploader.close()
    entries = [
        wire.ManifestItem(i, f"clip{i}", "ok", "video/mp4", len(f), sha(f), wire.part_count(len(f), 4096))
        for i, f in enumerate(files)
    ]  # fmt: skip
    for envelope in envs.manifest(entries):
        await worker.post(job, envelope)
    await worker.done(job)
    got = await subscriber(a, job, a.token(job))
    assert sorted(got.files) == [1, 2] and bytes(got.files[2]) == files[2]
    [refused] = [r for r in got.records if r["k"] == "error"]
    assert refused["code"] == "quota_exceeded" and refused["item"] == 0, refused
    assert refused["message"].endswith(
        "the relay's disk quota (5000 bytes) is full: 9000 more bytes do not fit"
    )
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=f"relay/{job}/")
    names = sorted(o["Key"].split(f"{job}/", 1)[1] for o in listed["Contents"])
    assert names == ["1/00001-clip1.mp4", "1/00002-clip2.mp4", f"uploads/00003-{sha(uploaded)}.bin"]
    assert a.relay.quota.used == 0, "nothing is left in the spool, nothing counts"
    async with httpx.AsyncClient(timeout=5) as http:
        assert (await http.get(f"{a.url}/readyz")).status_code == 200


async def test_one_replica_sweeps_finished_jobs_out_of_redis_and_the_bucket(
    replicas: Start, worker: ScriptedWorker, s3_server: S3Server
) -> None:
    a, b = await replicas("a", retention_s=1.0), await replicas("b", retention_s=1.0)
    job = await submit(a)
    await run_job(worker, job, make_files(2, 10_000))
    for _ in range(200):
        if a.relay.store.finished_at(job) is not None:
            break
        await asyncio.sleep(0.05)
    objects = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=f"relay/{job}/")
    assert objects["KeyCount"] == 2
    await asyncio.sleep(1.1)
    await asyncio.gather(
        a.relay.retention.sweep_once(), b.relay.retention.sweep_once()
    )  # one holds the sweeper's lease
    assert not a.relay.store.exists(job) and not b.relay.store.exists(job)
    bucket = s3_server.client()

    def objects_left() -> int:
        listed = bucket.list_objects_v2(Bucket=s3_server.bucket, Prefix=f"relay/{job}/")
        return int(listed["KeyCount"])

    # the objects go in a background task after the job left the index
    await until(lambda: objects_left() == 0, 30, "the job's objects deleted")
    deleted = sum(r.relay.metrics.deleted.labels("expired")._value.get() for r in (a, b))
    assert deleted == 1, "exactly one replica deleted it"


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        (None, 100, None), ("bytes=0-9", 100, (0, 9)), ("bytes=90-", 100, (90, 99)), ("bytes=-5", 100, (95, 99)),
        ("bytes=50-500", 100, (50, 99)), ("bytes=100-", 100, None), ("bytes=-0", 100, None),
        ("bytes=5-1", 100, None), ("bytes=0-1,4-5", 100, None), ("items=0-1", 100, None), ("bytes=0-0", 0, None),
    ],
)  # fmt: skip
def test_byte_range(header: str | None, size: int, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, size) == expected


@pytest.mark.parametrize("s3_kind", S3_SERVERS)
async def test_an_upload_to_one_replica_is_claimed_by_the_polling_one(
    replicas: Start, worker: ScriptedWorker, s3_server: S3Server
) -> None:
    """`PUT /v1/uploads` lands on any replica (the load balancer picks), the object waits in the bucket, and
    the replica polling the job claims it when the item's `ref` arrives (moved, with the item's type); every
    replica serves its bytes."""
    upload_key = generate_key()
    keys = f"{hash_key(API_KEY)},uploader={hash_key(upload_key)}/upload"
    a, b = await replicas("a", api_keys=keys), await replicas("b", api_keys=keys)
    job = await submit(a)
    await worker.take()
    data = make_files(1, 9000)[0]
    uploader = Uploader(UploadConfig(url=b.url, key=upload_key, attempts=1))
    try:
        url = await asyncio.to_thread(uploader.upload, job, 0, data, mime="video/mp4", sha256=sha(data))
    finally:
        uploader.close()
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=f"relay/{job}/uploads/")
    assert [o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]] == [f"00000-{sha(data)}.bin"]
    assert not any((b.settings.data_dir / "spool").rglob("*.bin")), "nothing kept on the receiving replica"
    envs = wire.Envelopes(job)
    await worker.post(job, envs.ref(0, url=url, mime="video/mp4", size=len(data), sha256=sha(data), id="u"))
    for envelope in envs.manifest(
        [wire.ManifestItem(0, "u", "ref", "video/mp4", len(data), sha(data), 0, url)]
    ):
        await worker.post(job, envelope)
    await worker.done(job)
    got = await subscriber(b, job, a.token(job))
    [item] = [r for r in got.records if r["k"] == "item"]
    assert item["delivery"] == "upload" and bytes(got.files[0]) == data
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket, Prefix=f"relay/{job}/")
    assert [o["Key"].split(f"{job}/", 1)[1] for o in listed["Contents"]] == ["1/00000-u.mp4"], (
        "moved, not copied"
    )
    moved = s3_server.client().head_object(Bucket=s3_server.bucket, Key=f"relay/{job}/1/00000-u.mp4")
    assert moved["ContentType"] == "video/mp4"
    bad = await asyncio.to_thread(
        httpx.put, f"{b.url}/v1/uploads/{job}/1", content=b"x" * 10,
        headers={"authorization": f"Bearer {upload_key}", "x-podstream-sha256": sha(b"y")},
    )  # fmt: skip
    assert bad.status_code == 409  # the job has ended on the replica that polled it, and B knows
