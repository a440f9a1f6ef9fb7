"""`WS /v1/ws` end to end: real uvicorn, real `websockets` clients, the emulator and a scripted worker."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from podstream.emulator import Emulator, EmulatorConfig
from tests.relay.conftest import (
    BACKENDS,
    BUCKET_BACKENDS,
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


async def new_job(relay: RelayServer) -> str:
    async with relay.http() as http:
        r = await http.post(f"{relay.url}/v1/jobs", json={"input": {}})
        assert r.status_code == 201
        job: str = r.json()["id"]
        return job


async def subscribe(
    ws: websockets.ClientConnection, job: str, after: int = 0, **extra: object
) -> dict[str, object]:
    await ws.send(pack({"t": "sub", "job": job, "from": after, **extra}))
    frame = await recv(ws)
    assert frame["t"] == "subscribed", frame
    return frame


async def subscriber(relay: RelayServer, job: str, after: int = 0) -> Received:
    async with ws_client(relay.ws_url, relay.token(job)) as ws:
        await subscribe(ws, job, after)
        return await consume(ws, job, Received())


def check_complete(got: Received, files: list[bytes], head: int, after: int = 0) -> None:
    assert got.seqs == list(range(after + 1, head + 1)), "every record exactly once, in order"
    items = {r["item"]: r for r in got.records if r["k"] == "item"}
    for i, data in enumerate(files):
        if i in items:
            assert bytes(got.files[i]) == data
            assert items[i]["sha256"] == hashlib.sha256(data).hexdigest()
    assert got.records[-1]["k"] == "done"


@pytest.mark.parametrize("backend", BUCKET_BACKENDS)  # items in the bucket: on moto and s3rver
async def test_subscribers_before_during_and_after_get_everything_once(
    relay_server: RelayServer, worker: ScriptedWorker
) -> None:
    job = await new_job(relay_server)
    files = make_files(4, 200_000)
    before = [asyncio.ensure_future(subscriber(relay_server, job)) for _ in range(3)]
    taken = await worker.take()
    batch = Batch(taken["id"], files)
    half = len(batch.envelopes) // 2
    for envelope in batch.envelopes[:half]:
        await worker.post(job, envelope)
    during = [asyncio.ensure_future(subscriber(relay_server, job)) for _ in range(3)]
    for envelope in batch.envelopes[half:]:
        await worker.post(job, envelope)
    await worker.done(job)
    results = await asyncio.gather(*before, *during)
    after = await asyncio.gather(*(subscriber(relay_server, job) for _ in range(3)))
    head = relay_server.relay.job(job).journal.published
    for got in [*results, *after]:
        check_complete(got, files, head)
        assert sorted(got.files) == [0, 1, 2, 3]
    kinds = [r["k"] for r in after[0].records]
    assert kinds.count("progress") == 4 and kinds.count("item") == 4


async def test_resume_from_any_seq(relay_server: RelayServer, worker: ScriptedWorker) -> None:
    job = await new_job(relay_server)
    files = make_files(3, 70_000)
    taken = await worker.take()
    for envelope in Batch(taken["id"], files).envelopes:
        await worker.post(job, envelope)
    await worker.done(job)
    full = await subscriber(relay_server, job)
    head = full.seqs[-1]
    for after in range(head):
        got = await subscriber(relay_server, job, after)
        assert got.seqs == list(range(after + 1, head + 1))
        # the bytes of an item come right after its record, whatever the resume point
        for record in got.records:
            if record["k"] == "item":
                assert bytes(got.files[record["item"]]) == files[record["item"]]
    async with ws_client(relay_server.ws_url, relay_server.token(job)) as ws:
        at_head = await subscribe(ws, job, head)  # it has everything: nothing follows
        assert at_head["recovered"] is True and at_head["head"] == head and at_head["status"] == "COMPLETED"
        with pytest.raises(TimeoutError):
            await recv(ws, 0.3)
    async with ws_client(relay_server.ws_url, relay_server.token(job)) as ws:
        ahead = await subscribe(ws, job, head + 5)
        assert ahead["recovered"] is False and ahead["head"] == head


async def test_inline_false_sends_records_only(relay_server: RelayServer, worker: ScriptedWorker) -> None:
    job = await new_job(relay_server)
    taken = await worker.take()
    for envelope in Batch(taken["id"], make_files(2, 50_000)).envelopes:
        await worker.post(job, envelope)
    await worker.done(job)
    async with ws_client(relay_server.ws_url, relay_server.token(job)) as ws:
        await subscribe(ws, job, 0, inline=False)
        kinds = []
        while True:
            frame = await recv(ws)
            assert frame["t"] == "ev", frame
            kinds.append(frame["k"])
            if frame["k"] == "done":
                break
        assert kinds.count("item") == 2


async def test_several_subscriptions_on_one_connection(
    relay_server: RelayServer, worker: ScriptedWorker
) -> None:
    jobs = [await new_job(relay_server) for _ in range(2)]
    for _ in jobs:
        taken = await worker.take()
        for envelope in Batch(taken["id"], make_files(2, 30_000)).envelopes:
            await worker.post(taken["id"], envelope)
        await worker.done(taken["id"])
    async with ws_client(relay_server.ws_url, relay_server.token(*jobs)) as ws:
        for job in jobs:
            await ws.send(pack({"t": "sub", "job": job, "from": 0}))
        done: set[str] = set()
        counts = {job: 0 for job in jobs}
        while len(done) < 2:
            frame = await recv(ws)
            if frame["t"] == "ev":
                assert frame["seq"] == counts[frame["job"]] + 1
                counts[frame["job"]] = frame["seq"]
                if frame["k"] == "done":
                    done.add(frame["job"])
        await ws.send(pack({"t": "unsub", "job": jobs[0]}))
        await ws.send(pack({"t": "unsub", "job": "never-subscribed"}))
        frame = await recv(ws)
        # the first unsub ended a finished subscription already; either way the answer is not_subscribed
        assert frame["t"] == "err" and frame["code"] == "not_subscribed"


async def test_stalled_subscriber_does_not_slow_the_others(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    relay = await start_relay(relay_settings(tmp_path, emulator, send_timeout_s=1.0))
    try:
        job = await new_job(relay)
        files = make_files(6, 1_500_000)  # far more than loopback socket buffers hold
        taken = await worker.take()
        for envelope in Batch(taken["id"], files, part_bytes=500_000).envelopes:
            await worker.post(job, envelope)
        await worker.done(job)
        for _ in range(200):
            if relay.relay.job(job).finished:
                break
            await asyncio.sleep(0.05)

        async with websockets.connect(relay.ws_url, compression=None, max_size=2**22, max_queue=1) as stalled:
            await stalled.send(pack({"t": "auth", "token": relay.token(job)}))
            await stalled.send(pack({"t": "sub", "job": job, "from": 0}))
            await asyncio.sleep(0.2)  # it never reads: its socket fills up
            loop = asyncio.get_running_loop()
            started = loop.time()
            others = await asyncio.gather(*(subscriber(relay, job) for _ in range(3)))
            elapsed = loop.time() - started
            head = relay.relay.job(job).journal.published
            for got in others:
                check_complete(got, files, head)
            assert elapsed < 10
            for _ in range(200):  # the relay cuts it off after its send deadline
                if not relay.relay.connections:
                    break
                await asyncio.sleep(0.05)
            assert relay.relay.connections == set()
            # it reads what was sent before it was cut off: whole frames, then the end
            applied = 0
            codes = []
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    frame = await recv(stalled, 10)
                    if (frame["t"] == "ev" and frame["k"] != "item") or (
                        frame["t"] == "chunk" and frame["last"]
                    ):
                        applied = frame["seq"]
                    elif frame["t"] == "bye":
                        codes.append(frame["code"])
            # A bye 4001 when it could still be written; a client too stalled for that sees the socket end.
            if closed.value.rcvd is not None:
                codes.append(closed.value.rcvd.code)
            assert set(codes) <= {4001}
            assert applied < head
        assert relay.relay.connections == set()
        # and it resumes from its last applied seq without losing anything
        got = await subscriber(relay, job, applied)
        check_complete(got, files, head, applied)
    finally:
        await relay.stop()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("text", 4500),
        (b"\xc1", 4500),  # never valid msgpack
        (pack([1, 2]), 4500),  # type: ignore[arg-type]
        (pack({"x": 1}), 4500),
        (pack({"t": "launch"}), 4500),
        (pack({"t": "sub", "job": 5, "from": 0}), 4500),
        (pack({"t": "sub", "job": "j", "from": "0"}), 4500),
        (pack({"t": "sub", "job": "j", "from": -1}), 4500),
        (pack({"t": "sub", "job": "j", "from": 0, "inline": "yes"}), 4500),
        (pack({"t": "pong", "n": "x"}), 4500),
        (pack({"t": "sub", "job": "j" * 70_000}), 4502),
    ],
)
async def test_malformed_frames_close_with_documented_codes(
    relay_server: RelayServer, frame: bytes | str, code: int
) -> None:
    async with ws_client(relay_server.ws_url, relay_server.token()) as ws:
        await ws.send(frame)
        bye = await recv(ws)
        assert bye == {"t": "bye", "code": code, "reason": bye["reason"]}
        with pytest.raises(ConnectionClosed) as closed:
            await recv(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    async with httpx.AsyncClient() as http:  # the server is fine
        assert (await http.get(f"{relay_server.url}/healthz")).status_code == 200


async def test_bad_and_unknown_jobs_get_err_and_the_connection_stays(relay_server: RelayServer) -> None:
    job = await new_job(relay_server)
    async with ws_client(relay_server.ws_url, relay_server.token(job, "nope")) as ws:
        await ws.send(pack({"t": "sub", "job": "../../etc/passwd", "from": 0}))
        frame = await recv(ws)
        assert frame["t"] == "err" and frame["code"] == "bad_job"
        await ws.send(pack({"t": "sub", "job": "nope", "from": 0}))
        frame = await recv(ws)
        assert frame == {"t": "err", "code": "not_found", "message": frame["message"], "job": "nope"}
        await subscribe(ws, job)
        await ws.send(pack({"t": "sub", "job": job, "from": 0}))
        while (frame := await recv(ws))["t"] != "err":
            pass
        assert frame["code"] == "already_subscribed"


async def test_too_many_subscriptions(tmp_path: Path, emulator: Emulator) -> None:
    relay = await start_relay(relay_settings(tmp_path, emulator, max_subscriptions=2))
    try:
        jobs = [await new_job(relay) for _ in range(3)]
        async with ws_client(relay.ws_url, relay.token(*jobs)) as ws:
            for job in jobs:
                await ws.send(pack({"t": "sub", "job": job, "from": 0}))
            while (frame := await recv(ws))["t"] != "bye":
                pass
            assert frame["code"] == 4503
    finally:
        await relay.stop()


async def test_ping_and_ping_timeout(tmp_path: Path, emulator: Emulator) -> None:
    # keepalive does not depend on auth: an insecure relay
    settings = relay_settings(tmp_path, emulator, ping_interval_s=0.2, ping_timeout_s=0.3, insecure=True)
    relay = await start_relay(settings)
    try:
        async with ws_client(relay.ws_url) as ws:  # answers pings: stays
            for _ in range(4):
                frame = await recv(ws)
                assert frame["t"] == "ping"
                await ws.send(pack({"t": "pong", "n": frame["n"]}))
        async with ws_client(relay.ws_url) as ws:  # does not: bye 4002
            while (frame := await recv(ws))["t"] == "ping":
                pass
            assert frame["t"] == "bye" and frame["code"] == 4002
    finally:
        await relay.stop()


async def test_drain_says_bye_4000(relay_server: RelayServer) -> None:
    async with ws_client(relay_server.ws_url, relay_server.token()) as ws:
        await relay_server.relay.drain()
        frame = await recv(ws)
        assert frame["t"] == "bye" and frame["code"] == 4000


async def test_unauthenticated_flood_does_not_lock_out_real_clients(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Issue 12 item 5: sockets that never send `auth` have their own budget; MAX_CONNECTIONS is for the rest."""
    settings = relay_settings(tmp_path, emulator, max_connections=3, max_pending_auth=10, auth_timeout_s=60)
    relay = await start_relay(settings)
    flood: list[websockets.ClientConnection] = []
    try:
        job = await new_job(relay)
        for _ in range(50):
            flood.append(await websockets.connect(relay.ws_url, compression=None))
        # A client with a token (sent in its first frame, as browsers must) and one with a key header get in.
        async with (
            ws_client(relay.ws_url, relay.token(job)) as ws1,
            ws_client(relay.ws_url, additional_headers=relay.headers) as ws2,
        ):
            await subscribe(ws1, job)
            await subscribe(ws2, job)
            async with ws_client(relay.ws_url, relay.token(job)) as ws3:
                await subscribe(ws3, job)
                # authenticated connections are still capped by max_connections
                async with websockets.connect(relay.ws_url, compression=None) as ws4:
                    await ws4.send(pack({"t": "auth", "token": relay.token(job)}))
                    assert (await recv(ws4)) == {
                        "t": "bye",
                        "code": 4004,
                        "reason": "too many connections; retry later",
                    }
        codes = []
        for ws in flood:
            try:
                frame = await recv(ws, 0.2)
                codes.append(frame["code"] if frame["t"] == "bye" else frame["t"])
            except TimeoutError:
                codes.append("open")
        # the oldest waiting sockets were closed (4004) to make room; at most the budget still waits
        assert codes.count("open") <= 10 and set(codes) <= {4004, "open"}
        assert codes[:30] == [4004] * 30
    finally:
        for ws in flood:
            await ws.close()
        await relay.stop()


async def test_a_broken_job_fails_its_own_sub_only(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    """Issue 12 item 3: an unreadable job.json gets `err broken_job`; other subscriptions and the list work."""
    settings = relay_settings(tmp_path, emulator)
    relay = await start_relay(settings)
    files = make_files(2, 20_000)
    try:
        jobs = []
        for _ in range(2):
            job = await new_job(relay)
            taken = await worker.take()
            for envelope in Batch(taken["id"], files).envelopes:
                await worker.post(taken["id"], envelope)
            await worker.done(taken["id"])
            jobs.append(job)
        for job in jobs:
            for _ in range(400):
                store = relay.relay.job(job)
                if store is not None and store.finished:
                    break
                await asyncio.sleep(0.05)
    finally:
        await relay.stop()
    broken, good = jobs
    (settings.data_dir / "jobs" / broken / "job.json").write_bytes(b'{"job": "\x00 not json')
    relay = await start_relay(settings)
    try:
        async with relay.http() as http:
            listing = await http.get(f"{relay.url}/v1/jobs")
            assert listing.status_code == 200, listing.text
            by_id = {j["id"]: j for j in listing.json()["jobs"]}
            assert by_id[good]["status"] == "COMPLETED"
            if by_id[broken]["status"] == "BROKEN":  # else the store rebuilt what it could: fine too
                r = await http.get(f"{relay.url}/v1/jobs/{broken}")
                assert r.status_code == 503 and r.json()["error"]["code"] == "broken_job"
        async with ws_client(relay.ws_url, relay.token(broken, good)) as ws:
            await ws.send(pack({"t": "sub", "job": broken, "from": 0}))
            first = await recv(ws)
            await subscribe(ws, good)
            got = await consume(ws, good, Received())
            check_complete(got, files, got.records[-1]["seq"])
            if first["t"] == "err":
                assert first["code"] == "broken_job" and first["job"] == broken
            else:
                assert first["t"] == "subscribed"
    finally:
        await relay.stop()


async def test_a_slow_reader_is_never_closed_for_a_missed_ping(tmp_path: Path) -> None:
    """Issue 16 item 3: a subscriber draining a large job slowly (its pings stuck behind megabytes of chunks,
    so its pongs come late or not at all) is alive while its socket drains; one that stops reading is not."""
    async with contextlib.AsyncExitStack() as stack:
        # a long heartbeat grace: the scripted worker posts 24 MB without pinging
        config = EmulatorConfig.for_tests(heartbeat_grace_s=120.0)
        emulator = await stack.enter_async_context(Emulator(config).serve(host="127.0.0.1", port=0))
        worker = ScriptedWorker(emulator)
        stack.push_async_callback(worker.close)
        await _slow_reader(tmp_path, emulator, worker)


async def _slow_reader(tmp_path: Path, emulator: Emulator, worker: ScriptedWorker) -> None:
    settings = relay_settings(tmp_path, emulator, ping_interval_s=0.2, ping_timeout_s=0.3, send_timeout_s=3.0)
    relay = await start_relay(settings)
    files = make_files(3, 8 * 1024 * 1024)
    try:
        job = await new_job(relay)
        taken = await worker.take()
        for envelope in Batch(taken["id"], files, part_bytes=512 * 1024).envelopes:
            await worker.post(taken["id"], envelope)
        await worker.done(taken["id"])
        for _ in range(600):
            store = relay.relay.job(job)
            if store is not None and store.finished:
                break
            await asyncio.sleep(0.05)
        # Reads one frame every 30 ms (about 8 MB/s) and answers each ping when it reads it, behind the
        # megabytes queued before it: 96 chunks take several ping windows (0.5 s) to drain.
        async with ws_client(relay.ws_url, relay.token(job), max_queue=1) as ws:
            await subscribe(ws, job)
            got, pings = Received(), 0
            while True:
                frame = await recv(ws, 30)
                await asyncio.sleep(0.03)
                if frame["t"] == "ping":
                    pings += 1
                    await ws.send(pack({"t": "pong", "n": frame["n"]}))
                    continue
                assert frame["t"] in ("ev", "chunk"), frame
                if frame["t"] == "ev":
                    got.records.append(frame)
                    if frame["k"] == "item":
                        got.files[frame["item"]] = bytearray()
                    if frame["k"] == "done":
                        break
                else:
                    got.files[frame["item"]].extend(frame["data"])
            assert [bytes(got.files[i]) for i in range(3)] == files
            assert pings >= 1
            # Idle now, and it stops answering pings: closed for that.
            while (frame := await recv(ws, 30))["t"] == "ping":
                pass
            assert frame["t"] == "bye" and frame["code"] == 4002
        # A subscriber that stops reading mid-transfer is closed (its sends stall: 4001, or no pong: 4002).
        registry = relay.relay.metrics.registry

        def ended(code: str) -> float:
            value = registry.get_sample_value("podstream_relay_ws_disconnects_total", {"code": code})
            return value or 0.0

        before = ended("4001") + ended("4002")
        async with ws_client(relay.ws_url, relay.token(job), max_queue=1) as ws:
            await subscribe(ws, job)
            for _ in range(200):  # the relay ends it (the client never reads again)
                if not relay.relay.connections:
                    break
                await asyncio.sleep(0.1)
            assert not relay.relay.connections
            assert ended("4001") + ended("4002") == before + 1
    finally:
        await relay.stop()
