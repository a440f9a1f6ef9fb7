"""relay.ingest.poller against the emulator: restart recovery, reported corruption and loss, RunPod retries; how
`/stream` entries are decoded."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from podstream import wire
from podstream.emulator import Emulator
from podstream.stream_split import entry_output as _entry_output
from tests.relay.conftest import (
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


@pytest.fixture
async def relay_without_recovery(tmp_path: Path, emulator: Emulator) -> AsyncIterator[RelayServer]:
    """A relay that reports gaps without asking for a resend (`recovery_attempts=0`): the scripted worker
    answers no resend job."""
    server = await start_relay(relay_settings(tmp_path, emulator, recovery_attempts=0))
    try:
        yield server
    finally:
        await server.stop()


async def submit(relay: RelayServer) -> str:
    async with relay.http() as http:
        r = await http.post(f"{relay.url}/v1/jobs", json={"input": {}})
        job: str = r.json()["id"]
        return job


async def until(predicate: Any, seconds: float = 20) -> None:
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def records(relay: RelayServer, job: str) -> list[dict[str, Any]]:
    async with relay.http() as http:
        r = await http.get(f"{relay.url}/v1/jobs/{job}/events", params={"format": "json"})
        events: list[dict[str, Any]] = r.json()["events"]
        return events


def unsigned(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`events` without their media URLs' `?exp=&sig=`: those are signed when read, expiring at the next
    whole minute, so two reads a minute boundary apart differ there and nowhere else."""
    return [{**e, "url": e["url"].split("?")[0]} if "url" in e else e for e in events]


async def test_restart_mid_job_loses_nothing_and_resumes_polling(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    settings = relay_settings(tmp_path, emulator)
    relay = await start_relay(settings)
    files = make_files(3, 300_000)
    try:
        job = await submit(relay)
        taken = await worker.take()
        batch = Batch(taken["id"], files, part_bytes=100_000)
        # stop in the middle of item 1: item 0 complete, item 1 half there
        cut = next(
            i
            for i, e in enumerate(batch.envelopes)
            if e["type"] == "part" and e["item"] == 1 and e["part"] == 2
        )
        for envelope in batch.envelopes[:cut]:
            await worker.post(job, envelope)
        poller = relay.relay.pollers.pollers[job]
        await until(lambda: poller.assembler.seen(cut) and not poller.assembler.missing(cut))
        async with ws_client(relay.ws_url, relay.token(job)) as ws:
            await ws.send(pack({"t": "sub", "job": job, "from": 0}))
            assert (await recv(ws))["t"] == "subscribed"
            got = Received()
            with contextlib.suppress(TimeoutError):  # caught up with what exists before the restart
                await consume(ws, job, got, seconds=1.0)
        before = await records(relay, job)
        assert [r["k"] for r in before].count("item") == 1
    finally:
        await relay.stop()

    for envelope in batch.envelopes[cut:]:  # the worker goes on while the relay is down
        await worker.post(job, envelope)
    await worker.done(job)

    relay = await start_relay(settings)
    try:
        assert relay.relay.polling(job) or relay.relay.job(job).finished
        await until(lambda: relay.relay.job(job).finished)
        after = await records(relay, job)
        assert unsigned(after[: len(before)]) == unsigned(before)  # nothing published was lost or changed
        kinds = [r["k"] for r in after]
        assert kinds.count("item") == 3 and kinds[-1] == "done", [
            r for r in after if r["k"] in ("error", "done")
        ]
        assert [r for r in after if r["k"] == "error"] == []
        assert after[-1]["status"] == "COMPLETED" and after[-1]["items"] == 3 and after[-1]["errors"] == 0
        # the subscriber resumes from the last seq it applied and gets the rest, bytes included
        async with ws_client(relay.ws_url, relay.token(job)) as ws:
            await ws.send(pack({"t": "sub", "job": job, "from": got.last_applied}))
            assert (await recv(ws))["t"] == "subscribed"
            rest = await consume(ws, job, Received())
        assert rest.seqs == list(range(got.last_applied + 1, after[-1]["seq"] + 1))
        applied = {
            **{i: bytes(b) for i, b in got.files.items() if i != 1},
            **{i: bytes(b) for i, b in rest.files.items()},
        }
        assert {i: hashlib.sha256(b).hexdigest() for i, b in applied.items()} == {
            i: hashlib.sha256(f).hexdigest() for i, f in enumerate(files)
        }
    finally:
        await relay.stop()


async def test_dropped_and_corrupt_parts_are_reported(
    relay_without_recovery: RelayServer, worker: ScriptedWorker
) -> None:
    job = await submit(relay_without_recovery)
    taken = await worker.take()
    files = make_files(3, 200_000)
    batch = Batch(taken["id"], files, part_bytes=100_000, progress=False)
    envelopes = batch.envelopes
    dropped = next(e for e in envelopes if e["type"] == "part" and e["item"] == 0 and e["part"] == 1)
    corrupt = copy.deepcopy(
        next(e for e in envelopes if e["type"] == "part" and e["item"] == 1 and e["part"] == 0)
    )
    flipped = "B" if corrupt["data"][100] == "A" else "A"
    corrupt["data"] = corrupt["data"][:100] + flipped + corrupt["data"][101:]  # right length, wrong bytes
    for envelope in envelopes:
        if envelope is dropped:
            continue
        if envelope["seq"] == corrupt["seq"]:
            envelope = corrupt
        await worker.post(job, envelope)
    await worker.post(job, {"v": 1, "nonsense": True})
    await worker.post(job, envelopes[-1])  # a duplicate (RunPod's SDK retries 5xx POSTs)
    await worker.done(job)
    await until(lambda: relay_without_recovery.relay.job(job).finished)
    got = await records(relay_without_recovery, job)
    errors = [(r["item"], r["code"]) for r in got if r["k"] == "error"]
    assert (None, "unknown_type") in errors
    assert (1, "bad_sha256") in errors
    assert (None, "gap") in errors and (0, "incomplete") in errors
    assert (0, "missing_item") in errors and (1, "missing_item") in errors
    assert (None, "duplicate") in errors
    items = [r["item"] for r in got if r["k"] == "item"]
    assert items == [2]
    assert got[-1]["k"] == "done" and got[-1]["items"] == 1 and got[-1]["errors"] >= 5
    # the bad bytes never reached a final name
    media = relay_without_recovery.relay.job(job).media
    assert sorted(p.name for p in media.rglob("*") if p.is_file()) == ["00002-clip2.mp4"]


async def test_a_new_run_starts_over(relay_server: RelayServer, worker: ScriptedWorker) -> None:
    """Envelopes of a new `run` (RunPod re-ran the job) replace what the earlier run sent."""
    job = await submit(relay_server)
    taken = await worker.take()
    old = Batch(taken["id"], make_files(2, 10_000))
    for envelope in old.envelopes[:4]:  # both items of the first run, no manifest
        await worker.post(job, envelope)
    files = make_files(2, 20_000)
    for envelope in Batch(taken["id"], files).envelopes:
        await worker.post(job, envelope)
    await worker.done(job)
    await until(lambda: relay_server.relay.job(job).finished)
    got = await records(relay_server, job)
    codes = [r["code"] for r in got if r["k"] == "error"]
    assert codes == ["restarted"]
    items = [r for r in got if r["k"] == "item"]
    assert [(r["item"], r["size"]) for r in items] == [(0, 10_000), (1, 10_001), (0, 20_000), (1, 20_001)]
    store = relay_server.relay.job(job)
    assert store.done is not None and store.done["status"] == "COMPLETED" and store.done["errors"] == 0
    async with relay_server.http() as http:
        media = await http.get(f"{relay_server.url}/v1/jobs/{job}/media/0")
        assert media.content == files[0]
    assert sorted(p.parent.name for p in store.media.rglob("*.mp4")) == ["1", "1", "2", "2"]


class BacklogRunPod:
    """A stand-in for RunPod (plain HTTP/1.1 on 127.0.0.1) whose first `/stream` answer, a backlog, stops
    after `first` until `release` is set, then sends `rest`; later answers say COMPLETED with nothing."""

    def __init__(self, job: str, first: bytes, rest: bytes) -> None:
        self.job, self.first, self.rest = job, first, rest
        self.release = asyncio.Event()
        self.streams = 0
        self.answered = False

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1].split(b"?")[0].decode()
                if path.endswith(f"/stream/{self.job}"):
                    self.streams += 1
                    if self.streams == 1:
                        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
                        writer.write(b"transfer-encoding: chunked\r\n\r\n" + _chunk(self.first))
                        await writer.drain()
                        await self.release.wait()
                        writer.write(_chunk(self.rest) + b"0\r\n\r\n")
                        await writer.drain()
                        self.answered = True
                        continue
                    body = {"id": self.job, "status": "COMPLETED", "stream": []}
                elif path.endswith(f"/status/{self.job}"):
                    body = {"id": self.job, "status": "COMPLETED" if self.answered else "IN_PROGRESS"}
                else:
                    body = {"error": "not found"}
                data = json.dumps(body).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
                writer.write(f"content-length: {len(data)}\r\n\r\n".encode() + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def test_a_backlogs_first_file_is_published_before_its_answer_ends(tmp_path: Path) -> None:
    from relay.ingest.runpod import STREAM_PIECE_BYTES  # the size at which the relay hands a piece over

    job = "backlog-1"
    files = [*make_files(1, STREAM_PIECE_BYTES // 2), *make_files(1, 2 * STREAM_PIECE_BYTES), b"last"]
    env = wire.Envelopes(job)
    entries: list[list[bytes]] = []
    manifest = []
    for i, data in enumerate(files):
        parts = list(env.parts(i, data, mime="video/mp4", id=f"clip{i}"))
        entries.append([json.dumps({"output": e}).encode() for e in parts])
        manifest.append(
            wire.ManifestItem(i, f"clip{i}", "ok", "video/mp4", len(data), wire.sha256_hex(data), len(parts))
        )
    tail = [json.dumps({"output": e}).encode() for e in env.manifest(manifest)]
    # Items 0 and 1 come first: item 1 is big enough that item 0 is in a piece handed over in full.
    first = b'{"id": "%s", "status": "IN_PROGRESS", "stream": [' % job.encode()
    first += b",".join(entries[0] + entries[1]) + b","
    rest = b",".join(entries[2] + tail) + b"]}"
    runpod = BacklogRunPod(job, first, rest)
    server = await asyncio.start_server(runpod.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/v2/backlog"
    relay = await start_relay(relay_settings(tmp_path, None, runpod_url=url, poll_wait_ms=60_000))
    try:
        async with relay.http() as http:
            assert (await http.post(f"{relay.url}/v1/jobs/{job}/attach")).status_code == 201
            events = f"{relay.url}/v1/jobs/{job}/events"

            async def records_until(kinds: set[str], after: int = 0) -> list[dict[str, Any]]:
                """Journal records (long polls) up to the first of `kinds`."""
                out: list[dict[str, Any]] = []
                while not out or out[-1]["k"] not in kinds:
                    got = await http.get(events, params={"format": "json", "after": after, "wait": 10_000})
                    for event in got.json()["events"]:
                        after = event["seq"]
                        if not out or out[-1]["k"] not in kinds:
                            out.append(event)
                return out

            seen = await asyncio.wait_for(records_until({"item", "done"}), 60)
            assert seen[-1]["k"] == "item" and seen[-1]["item"] == 0
            assert not runpod.answered and runpod.streams == 1, "published while its answer is received"
            runpod.release.set()
            rest_of_it = await asyncio.wait_for(records_until({"done"}, seen[-1]["seq"]), 60)
            done = rest_of_it[-1]
            assert done["items"] == 3 and done["errors"] == 0, rest_of_it
            assert [e["item"] for e in seen + rest_of_it if e["k"] == "item"] == [0, 1, 2]
            for i, data in enumerate(files):
                r = await http.get(f"{relay.url}/v1/jobs/{job}/media/{i}")
                assert r.status_code == 200 and r.content == data
    finally:
        await relay.stop()
        server.close()
        await server.wait_closed()


def test_entry_outputs_are_what_json_makes_of_them() -> None:
    part = next(wire.Envelopes("j").parts(0, b"\x00\xff" * 3000, mime="video/mp4", id="a"))
    entries = [
        json.dumps({"output": part}),
        json.dumps({"output": part}, separators=(",", ":")),
        json.dumps({"output": {**part, "data": part["data"].replace("/", "\\/")}}),  # escapes: decoded
        json.dumps({"output": {**part, "id": 'x\\"data'}}),
        json.dumps({"output": {"data": "QUJD", "items": [{"data": "AAAA"}]}}),  # nested: not a part
        json.dumps({"meta": {"data": "AAAA"}, "output": {"data": ""}}),  # two "data": parsed whole
        json.dumps({"output": {"data": 12, "type": "part"}}),
        json.dumps({"output": {"type": "data", "data": "é"}}, ensure_ascii=False),
        json.dumps({"output": {"data": "QUJD"}, "data": "x"}),
        json.dumps({"no_output": {"data": "QUJD"}}),
    ]
    for text in entries:
        entry = json.loads(text)
        expected = entry.get("output", entry)
        got = _entry_output(text.encode())
        if isinstance(got, dict) and isinstance(got.get("data"), memoryview):  # a part's, as its bytes
            got = {**got, "data": bytes(got["data"]).decode("ascii")}
        assert got == expected, text
    assert isinstance(_entry_output(b'{"output": {"data": "AB'), str)  # not JSON: rejected by the Assembler


# ------------------------------------------------------------------------------ crashes


async def test_a_crashed_poller_is_journaled_restarted_and_the_job_ends(
    relay_without_recovery: RelayServer, worker: ScriptedWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any exception out of a poller (here EMFILE opening an item's file, as under an fd flood) is journaled
    as `poller_crashed`; PollerSet starts a fresh poller after a backoff, which rebuilds its state from the
    files and polls on: what the worker sends afterwards arrives, and the job ends with `done`."""
    import errno

    from relay.storage.local.store import DiskJobStore

    relay = relay_without_recovery
    job = await submit(relay)
    taken = await worker.take()
    files = make_files(3, 50_000)
    envelopes = Batch(taken["id"], files, part_bytes=20_000, progress=False).envelopes
    by_item: dict[int, list[dict[str, Any]]] = {}
    for envelope in envelopes:
        by_item.setdefault(envelope.get("item", -1), []).append(envelope)
    for envelope in by_item[0]:
        await worker.post(job, envelope)
    await until(lambda: 0 in relay.relay.job(job).items)

    original = DiskJobStore.media_sink
    faults: list[int] = []

    def failing(store: DiskJobStore, directory: Path, item: int, *args: Any, **kwargs: Any) -> Any:
        if item == 1 and not kwargs.get("replaying") and not faults:
            faults.append(item)
            raise OSError(errno.EMFILE, "Too many open files")
        return original(store, directory, item, *args, **kwargs)

    monkeypatch.setattr(DiskJobStore, "media_sink", failing)
    for envelope in by_item[1]:
        await worker.post(job, envelope)
    await until(lambda: relay.relay.pollers.restarts == 1)
    for envelope in by_item[2] + by_item[-1]:  # item 2 and the manifest, to the restarted poller
        await worker.post(job, envelope)
    await worker.done(job)
    await until(lambda: relay.relay.job(job).finished)

    events = await records(relay, job)
    [crash] = [e for e in events if e["k"] == "error" and e["code"] == "poller_crashed"]
    assert "OSError" in crash["message"] and "Too many open files" in crash["message"]
    assert "restarting it in" in crash["message"]
    store = relay.relay.job(job)
    assert sorted(store.items) == [0, 2] and store.status == "COMPLETED"
    # item 1 was drained from RunPod by the poller that crashed: reported as lost, never silently
    lost = [e for e in events if e["k"] == "error" and e.get("item") == 1]
    assert lost and events[-1]["k"] == "done"
    assert crash["seq"] < min(e["seq"] for e in lost)


def test_restart_delays_grow_jittered_and_capped() -> None:
    from relay.ingest.poller import PollerSet
    from relay.ingest.runpod import Backoff

    low = PollerSet(restart_backoff=Backoff(0.5, 30.0), rng=lambda: 0.0)
    high = PollerSet(restart_backoff=Backoff(0.5, 30.0), rng=lambda: 0.999999)
    lows = [low.restart_delay(n) for n in range(1, 12)]
    highs = [high.restart_delay(n) for n in range(1, 12)]
    assert lows[0] == 0.5 and highs[0] == pytest.approx(1.0)  # never an immediate, tight restart loop
    assert lows == sorted(lows) and max(highs) == pytest.approx(30.0) and max(lows) == 15.0
    assert all(lo < hi for lo, hi in zip(lows, highs, strict=True))  # jittered within [d/2, d]


async def test_gap_recovery_and_the_crash_hook_are_given_to_pollers_without_their_own(tmp_path: Path) -> None:
    from relay.ingest.poller import JobPoller, PollerSet
    from relay.ingest.recovery import GapRecovery
    from relay.ingest.runpod import StreamBatch
    from relay.storage.local.jobs import Store

    def hook(batch: StreamBatch) -> None:
        raise AssertionError("no answer is drained here")

    shared, own = GapRecovery(attempts=1), GapRecovery(attempts=3)
    pollers = PollerSet(recovery=shared, on_drained=hook)
    store = Store(tmp_path, fsync=False)
    plain = JobPoller(store.create("plain"), None)
    mine = JobPoller(store.create("mine"), None, recovery=own)
    assert pollers.start(plain) and pollers.start(mine)
    assert (plain.recovery, plain.on_drained) == (shared, hook)
    assert (mine.recovery, mine.on_drained) == (own, hook)
    restarted = mine.fresh()  # what a crashed poller is replaced by keeps them
    assert (restarted.recovery, restarted.on_drained) == (own, hook)
    await pollers.wait("plain")  # no RunPod URL: each poller reads its job back and stops
    await pollers.wait("mine")
    assert len(pollers) == 0


# ------------------------------------------------------------------------------ a failed job's error


async def test_a_failed_jobs_error_is_read_through_status_errors_and_reaches_consumers_as_one_line(
    relay_without_recovery: RelayServer,
    emulator: Emulator,
    worker: ScriptedWorker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    relay = relay_without_recovery
    job = await submit(relay)
    await worker.take()
    traceback = (
        'Traceback (most recent call last):\n  File "/app/worker/handler.py", line 9\nValueError: boom'
    )
    emulator.faults.status_responses = [503] * 14  # more than one call's retries (5): keep asking
    await worker.done(job, error=f"handler: the model ran out of memory \ntraceback: {traceback}")
    await until(lambda: relay.relay.job(job).finished, seconds=60)
    assert emulator.faults.status_responses == []  # every injected error was answered, then it was read
    events = await records(relay, job)
    [failed] = [e for e in events if e["k"] == "status" and e["status"] == "FAILED"]
    assert failed["error"] == "the model ran out of memory"  # one line: no traceback for token holders
    assert events[-1]["k"] == "done" and events[-1]["status"] == "FAILED"
    async with relay.http() as http:
        body = (await http.get(f"{relay.url}/v1/jobs/{job}")).text
    assert "Traceback" not in body and "handler.py" not in body
    assert any("Traceback" in r.getMessage() for r in caplog.records)  # the relay's log has it all


async def test_when_the_manifest_and_the_last_item_are_lost_the_item_is_named(
    relay_without_recovery: RelayServer, worker: ScriptedWorker
) -> None:
    """No seq of the last item (nor the manifest) ever came, so only the input's item count, kept at
    submit, shows that item 2 is missing: it is named in its own `missing_item` error."""
    relay = relay_without_recovery
    items = [{"prompt": "a", "id": "a"}, {"prompt": "b", "id": "b"}, {"prompt": "c", "id": "c"}]
    async with relay.http() as http:
        created = await http.post(
            f"{relay.url}/v1/jobs", json={"input": {"task": "text-to-video", "items": items}}
        )
        job: str = created.json()["id"]
    await worker.take()
    files = make_files(3, 3000)
    envelopes = Batch(job, files, part_bytes=1000, progress=False).envelopes
    for envelope in envelopes:
        if envelope["type"] == "part" and envelope["item"] < 2:
            await worker.post(job, envelope)
    await worker.done(job)
    await until(lambda: relay.relay.job(job).finished)
    errors = [e for e in await records(relay, job) if e["k"] == "error"]
    assert [e["code"] for e in errors] == ["missing_manifest", "missing_item"]
    assert errors[1]["item"] == 2 and "asks for 3 item(s)" in errors[1]["message"]
    assert sorted(relay.relay.job(job).items) == [0, 1]


def test_a_group_commit_makes_files_and_logs_durable_before_anything_is_published(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pieces of one `/stream` answer, two items, one commit: each file is fsynced once (before its
    rename), then its directory once, the ingest log once and the journal once, and only then is a record
    published. Until that commit neither log has a byte on disk."""
    import os

    from relay.ingest.poller import JobPoller
    from relay.storage.job import JobHooks
    from relay.storage.local.jobs import Store

    published: list[int] = []
    store = Store(tmp_path, fsync=True, hooks=JobHooks(on_commit=lambda job, r: published.append(r["seq"])))
    job = store.create("group-1")
    poller = JobPoller(job, None)
    poller.recover()
    files = make_files(2, 300_000)
    env = wire.Envelopes("group-1")
    pieces = [
        [json.dumps({"output": e}).encode() for e in env.parts(i, data, mime="video/mp4", id=f"c{i}")]
        for i, data in enumerate(files)
    ]
    fsyncs: list[tuple[str, int]] = []  # (what was fsynced, records published by then)
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        fsyncs.append((os.path.relpath(name, job.dir), len(published)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    journal, ingest_log = job.dir / "journal.log", job.dir / "wire.log"
    size_before = journal.stat().st_size, ingest_log.stat().st_size
    poller._committed_at = time.monotonic()  # the pieces come closer together than GROUP_COMMIT_S
    for texts in pieces:
        poller._ingest_piece("IN_PROGRESS", texts)
    assert job.journal.published == 0 and published == [] and job.journal.head == 3  # status + 2 items
    assert (journal.stat().st_size, ingest_log.stat().st_size) == size_before  # nothing written yet
    # each file fsynced once, before its rename; its directory waits for the commit
    assert [name for name, _ in fsyncs] == ["media/1/.00000-c0.mp4.part", "media/1/.00001-c1.mp4.part"]
    poller._commit_pieces()
    assert [name for name, _ in fsyncs[2:]] == ["media/1", "wire.log", "journal.log"]
    assert all(n == 0 for _, n in fsyncs), "a record was published before its bytes and itself were durable"
    assert published == [1, 2, 3] and job.journal.published == 3
    poller._commit_pieces()  # nothing pending: no fsync
    assert len(fsyncs) == 5
    job.close()
