"""Damaged storage, end to end: a job runs through a real relay (uvicorn, the emulator, a scripted worker),
the relay stops, its files are damaged in one of twelve ways, a new relay opens the same data directory,
and a websocket watcher (every receive under a timeout: a hang fails the test) checks the outcome.

Each kind of damage must end clearly: the watcher gets `done` (or, for a job that cannot be opened, an
`err` frame), and every record that can be read or rebuilt is there, with its own seq."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from podstream.emulator import Emulator, EmulatorConfig
from relay.storage.job import JOURNAL_DAMAGED, LOST_RECORD, seq_ranges
from relay.storage.local.records import MAGIC, RecordLog
from tests.relay.conftest import (
    Batch,
    RelayServer,
    ScriptedWorker,
    make_files,
    pack,
    recv,
    relay_settings,
    sha,
    start_relay,
    ws_client,
)
from tests.relay.test_service import submit_and_run


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """The emulator with a heartbeat grace that outlasts a relay restart (a scripted worker never pings)."""
    async with Emulator(EmulatorConfig.for_tests(heartbeat_grace_s=60.0)).serve(
        host="127.0.0.1", port=0
    ) as emu:
        yield emu


@dataclass
class Watched:
    """What one websocket watcher got for a job."""

    records: list[dict[str, Any]] = field(default_factory=list)
    files: dict[int, bytes] = field(default_factory=dict)
    media_errors: dict[int, str] = field(default_factory=dict)
    err: dict[str, Any] | None = None

    def codes(self) -> list[str]:
        return [r["code"] for r in self.records if r["k"] == "error"]

    def items(self) -> dict[int, dict[str, Any]]:
        return {r["item"]: r for r in self.records if r["k"] == "item"}


async def watch(relay: RelayServer, job: str) -> Watched:
    """Subscribe from 0 and apply frames until `done`; a media error fails that item only."""
    got = Watched()
    async with ws_client(relay.ws_url, relay.token(job)) as ws:
        await ws.send(pack({"t": "sub", "job": job, "from": 0}))
        first = await recv(ws)
        if first["t"] == "err":
            got.err = first
            return got
        assert first["t"] == "subscribed", first
        pending: dict[str, Any] | None = None
        buffer = bytearray()
        while True:
            frame = await recv(ws, 15)
            if frame["t"] == "ping":
                await ws.send(pack({"t": "pong", "n": frame["n"]}))
            elif frame["t"] == "ev":
                assert pending is None, "a record arrived before the previous item's bytes"
                got.records.append(frame)
                if frame["k"] == "item" and frame["url"].startswith("/v1/"):
                    pending, buffer = frame, bytearray()
                if frame["k"] == "done":
                    return got
            elif frame["t"] == "chunk":
                assert pending is not None and frame["off"] == len(buffer)
                buffer.extend(frame["data"])
                if frame["last"]:
                    got.files[pending["item"]] = bytes(buffer)
                    pending = None
            elif frame["t"] == "err":
                assert frame["code"] == "media_unavailable" and pending is not None, frame
                got.media_errors[pending["item"]] = frame["message"]
                pending = None
            else:
                raise AssertionError(f"unexpected frame {frame}")


def unsigned(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with each `url` cut before its signature's query string."""
    return [{**r, "url": r["url"].split("?")[0]} if isinstance(r.get("url"), str) else r for r in records]


def scan(path: Path) -> list[tuple[int, dict[str, Any]]]:
    log = RecordLog(path, fsync=False)
    try:
        return list(log.scan())
    finally:
        log.close()


def poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def flip(path: Path, offset: int) -> None:
    poke(path, offset, bytes([path.read_bytes()[offset] ^ 0x5A]))


@dataclass
class Finished:
    """A finished job's files, as the first relay left them."""

    job: str
    dir: Path
    files: list[bytes]
    records: list[dict[str, Any]]
    offsets: dict[int, int]  # seq -> offset in journal.log

    def item_seq(self, item: int) -> int:
        return int(next(r["seq"] for r in self.records if r["k"] == "item" and r["item"] == item))

    def media(self, item: int) -> Path:
        record = next(r for r in self.records if r["k"] == "item" and r["item"] == item)
        return self.dir / "media" / str(record["_file"])


async def run_finished(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker, n: int = 1
) -> list[Finished]:
    relay = await start_relay(relay_settings(tmp_path, emulator, recovery_attempts=0))
    out = []
    try:
        for _ in range(n):
            files = make_files(4, 120_000)
            status, created = await submit_and_run(relay, worker, files)
            assert status == 201
            job_dir = tmp_path / "data" / "jobs" / created["id"]
            out.append(Finished(created["id"], job_dir, files, [], {}))
    finally:
        await relay.stop()
    for job in out:
        scanned = scan(job.dir / "journal.log")
        job.records = [r for _o, r in scanned]
        job.offsets = {r["seq"]: o for o, r in scanned}
        assert job.records[-1]["k"] == "done" and job.records[-1]["status"] == "COMPLETED"
    return out


async def reopened(tmp_path: Path, emulator: Emulator) -> RelayServer:
    return await start_relay(relay_settings(tmp_path, emulator, recovery_attempts=0))


def assert_every_item(got: Watched, job: Finished) -> None:
    assert {i: sha(b) for i, b in got.files.items()} == {i: sha(f) for i, f in enumerate(job.files)}
    for item in range(len(job.files)):  # each at its own seq, as before the damage
        assert got.items()[item]["seq"] == job.item_seq(item)


def assert_ends_damaged(got: Watched, job: Finished, *, quarantined: bool = False) -> dict[str, Any]:
    """The watcher got an `error journal_damaged` before a `done` record of the job's status; damage inside
    the journal (not a torn or lost end) left a copy of the damaged file in quarantine/."""
    seqs = [r["seq"] for r in got.records]
    assert seqs == list(range(1, len(seqs) + 1)), "seqs stay dense"
    assert got.records[-1]["k"] == "done" and got.records[-1]["status"] == "COMPLETED"
    damage = [r for r in got.records if r["k"] == "error" and r["code"] == JOURNAL_DAMAGED]
    assert len(damage) == 1 and damage[0]["seq"] == got.records[-1]["seq"] - 1
    assert (job.dir / "quarantine").is_dir() == quarantined
    assert ("the damaged journal is kept as quarantine/" in damage[0]["message"]) == quarantined
    return damage[0]


# ------------------------------------------------------------------------------------ the journal


async def test_a_byte_flipped_mid_journal_loses_nothing(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    [job] = await run_finished(tmp_path, emulator, worker)
    seq = job.item_seq(1)
    before = (job.dir / "journal.log").read_bytes()
    flip(job.dir / "journal.log", job.offsets[seq] + 20)  # inside the item's record
    relay = await reopened(tmp_path, emulator)
    try:
        got = await watch(relay, job.job)
        assert_every_item(got, job)  # item 1's record was rebuilt from wire.log, at its own seq
        damage = assert_ends_damaged(got, job, quarantined=True)
        assert "1 record(s) rebuilt" in damage["message"] and "0 lost" in damage["message"]
        [kept] = list((job.dir / "quarantine").iterdir())
        assert kept.name.startswith("journal.log.") and kept.read_bytes() != before  # the damaged copy
        assert len(kept.read_bytes()) == len(before)
        body = (await (relay.http()).get(f"{relay.url}/v1/jobs/{job.job}")).json()
        assert body["finished"] and [i["item"] for i in body["items"]] == [0, 1, 2, 3]
        assert JOURNAL_DAMAGED in [e["code"] for e in body["errors"]]
    finally:
        await relay.stop()
    # a second restart finds a whole journal: nothing is reported twice
    relay = await reopened(tmp_path, emulator)
    try:
        again = await watch(relay, job.job)
        # (signed media URLs name their expiry, rounded to the minute: equal but for when they were read)
        assert unsigned(again.records) == unsigned(got.records)
    finally:
        await relay.stop()


async def test_a_bad_length_field_loses_nothing(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    [job] = await run_finished(tmp_path, emulator, worker)
    poke(job.dir / "journal.log", job.offsets[job.item_seq(2)] + len(MAGIC), (5_000_000).to_bytes(4, "big"))
    relay = await reopened(tmp_path, emulator)
    try:
        got = await watch(relay, job.job)
        assert_every_item(got, job)
        assert_ends_damaged(got, job, quarantined=True)
    finally:
        await relay.stop()


async def test_a_torn_done_record_ends_the_job_again(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    [job] = await run_finished(tmp_path, emulator, worker)
    path = job.dir / "journal.log"
    os.truncate(path, path.stat().st_size - 5)
    relay = await reopened(tmp_path, emulator)
    try:
        got = await watch(relay, job.job)
        assert_every_item(got, job)
        damage = assert_ends_damaged(got, job)
        assert "the done record" in damage["message"]
        assert got.records[:-2] == [
            relay.relay.public(r) | {"job": job.job, "t": "ev"} for r in job.records[:-1]
        ]
    finally:
        await relay.stop()


@pytest.mark.parametrize("how", ["zero_length", "cut_at_half", "deleted"])
async def test_a_lost_journal_is_rebuilt_from_wire_log_and_media(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker, how: str
) -> None:
    [job] = await run_finished(tmp_path, emulator, worker)
    path = job.dir / "journal.log"
    if how == "zero_length":
        os.truncate(path, 0)
    elif how == "cut_at_half":
        os.truncate(path, path.stat().st_size // 2)
    else:
        path.unlink()
    relay = await reopened(tmp_path, emulator)
    try:
        got = await watch(relay, job.job)
        assert_every_item(got, job)  # every item, at its own seq, verified against its file
        damage = assert_ends_damaged(got, job)
        # what wire.log cannot give back (status records, end checks) is a `lost_record` at its seq
        lost = [r["seq"] for r in got.records if r["k"] == "error" and r["code"] == LOST_RECORD]
        derivable = {r["seq"] for r in job.records if r["k"] in ("item", "progress")}
        assert not derivable & set(lost)
        # (records after the last one wire.log knows of cannot even be counted: the error and done follow)
        lost_before = [r["seq"] for r in job.records if r["k"] == "status" and r["seq"] < max(derivable)]
        if how != "cut_at_half":  # the first half, with the status records, survived the cut
            assert lost == lost_before and lost
            assert f"{len(lost)} lost (seq {seq_ranges(lost)})" in damage["message"]
        assert ("missing or empty" in damage["message"]) == (how != "cut_at_half")
    finally:
        await relay.stop()


async def test_garbage_appended_to_the_journal_is_cut_off(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    [job] = await run_finished(tmp_path, emulator, worker)
    path = job.dir / "journal.log"
    path.write_bytes(path.read_bytes() + os.urandom(300) + MAGIC + os.urandom(40))
    relay = await reopened(tmp_path, emulator)
    try:
        got = await watch(relay, job.job)
        assert_every_item(got, job)
        assert JOURNAL_DAMAGED not in got.codes()  # a torn tail is a crash's normal mark, nothing was lost
        assert [r["seq"] for r in got.records] == [r["seq"] for r in job.records]
    finally:
        await relay.stop()


async def test_a_truncated_wire_log_leaves_a_finished_job_whole(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    [job] = await run_finished(tmp_path, emulator, worker)
    wire_log = job.dir / "wire.log"
    os.truncate(wire_log, wire_log.stat().st_size // 2)
    relay = await reopened(tmp_path, emulator)
    try:
        got = await watch(relay, job.job)
        assert_every_item(got, job)
        assert [r["seq"] for r in got.records] == [r["seq"] for r in job.records]
        assert got.records[-1]["k"] == "done"
    finally:
        await relay.stop()


# ------------------------------------------------------------------------------------ media


@pytest.mark.parametrize("how", ["byte_flipped", "deleted"])
async def test_damaged_media_fails_that_item_only(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker, how: str
) -> None:
    [job] = await run_finished(tmp_path, emulator, worker)
    media = job.media(2)
    if how == "byte_flipped":
        flip(media, 1000)
    else:
        media.unlink()
    relay = await reopened(tmp_path, emulator)
    try:
        got = await watch(relay, job.job)
        assert got.records[-1]["k"] == "done"
        assert list(got.media_errors) == [2]
        assert ("damaged" if how == "byte_flipped" else "no longer available") in got.media_errors[2]
        assert {i: sha(b) for i, b in got.files.items()} == {i: sha(job.files[i]) for i in (0, 1, 3)}
        async with relay.http() as http:
            r = await http.get(f"{relay.url}/v1/jobs/{job.job}/media/2")
            assert r.status_code == 410 and r.json()["error"]["code"] == "gone"
            ok = await http.get(f"{relay.url}/v1/jobs/{job.job}/media/1")
            assert ok.status_code == 200 and ok.content == job.files[1]
        if how == "byte_flipped":  # the damaged file is kept aside, never served
            [kept] = list((job.dir / "quarantine").iterdir())
            assert kept.name.startswith("media-") and not media.exists()
    finally:
        await relay.stop()


# ------------------------------------------------------------------------------------ job.json


@pytest.mark.parametrize("how", ["corrupt", "missing"])
async def test_a_job_without_a_readable_job_json_is_reported_broken_alone(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker, how: str
) -> None:
    broken, healthy = await run_finished(tmp_path, emulator, worker, n=2)
    meta = broken.dir / "job.json"
    if how == "corrupt":
        meta.write_bytes(meta.read_bytes()[:-7] + b"\x00\xff{")
    else:
        meta.unlink()
    relay = await reopened(tmp_path, emulator)
    try:
        async with relay.http() as http:
            listed = {j["id"]: j for j in (await http.get(f"{relay.url}/v1/jobs")).json()["jobs"]}
            assert listed[healthy.job]["status"] == "COMPLETED"
            assert listed[broken.job]["status"] == "BROKEN"
            reason = "not valid JSON" if how == "corrupt" else "job.json is missing"
            assert reason in listed[broken.job]["error"]["message"]
            r = await http.get(f"{relay.url}/v1/jobs/{broken.job}")
            assert r.status_code == 503 and r.json()["error"]["code"] == "broken_job"
            assert reason in r.json()["error"]["message"]
        got = await watch(relay, broken.job)
        assert got.err is not None and got.err["code"] == "broken_job" and reason in got.err["message"]
        assert_every_item(await watch(relay, healthy.job), healthy)  # everything else works
        assert broken.dir.is_dir() and (broken.dir / "journal.log").exists()  # left for an operator
    finally:
        await relay.stop()


# ------------------------------------------------------------------------------------ a live job


async def test_damage_found_at_a_restart_mid_job_and_the_job_goes_on(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    files = make_files(4, 100_000)
    relay = await start_relay(relay_settings(tmp_path, emulator, recovery_attempts=0))
    try:
        async with relay.http() as http:
            created = (await http.post(f"{relay.url}/v1/jobs", json={"input": {}})).json()
        taken = await worker.take()
        envelopes = Batch(taken["id"], files, part_bytes=40_000).envelopes
        half = next(i for i, e in enumerate(envelopes) if e.get("item") == 2)
        for envelope in envelopes[:half]:
            await worker.post(taken["id"], envelope)
        for _ in range(400):
            if 1 in relay.relay.job(created["id"]).items:
                break
            await asyncio.sleep(0.05)
        assert 1 in relay.relay.job(created["id"]).items
    finally:
        await relay.stop()
    job_dir = tmp_path / "data" / "jobs" / created["id"]
    scanned = scan(job_dir / "journal.log")
    offset = next(o for o, r in scanned if r["k"] == "item" and r["item"] == 0)
    flip(job_dir / "journal.log", offset + 30)
    relay = await reopened(tmp_path, emulator)
    try:
        for envelope in envelopes[half:]:
            await worker.post(taken["id"], envelope)
        await worker.done(taken["id"])
        got = await watch(relay, created["id"])
        assert {i: sha(b) for i, b in got.files.items()} == {i: sha(f) for i, f in enumerate(files)}
        assert got.records[-1]["k"] == "done" and got.records[-1]["status"] == "COMPLETED"
        assert JOURNAL_DAMAGED in got.codes() and "gap" not in got.codes()
        seqs = [r["seq"] for r in got.records]
        assert seqs == list(range(1, len(seqs) + 1))
    finally:
        await relay.stop()
