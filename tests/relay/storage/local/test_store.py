"""relay.storage.local.store: the journal (dense seq, torn tails, tail cache vs disk), media sinks, job directories."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.storage.errors import BadJobId, QuotaExceeded, check_job_id
from relay.storage.job import public
from relay.storage.local.jobs import Store
from relay.storage.local.journal import Journal
from relay.storage.local.media import MediaSink
from relay.storage.local.records import RecordLog
from relay.storage.quota import DiskQuota


def test_journal_is_dense_and_reads_back_from_memory_and_disk(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.log", fsync=False, tail=4)
    list(journal.load())
    for i in range(20):
        journal.append("progress", item=0, step=i, steps=20)
        if i % 3 == 0:
            journal.commit()
    assert journal.published == 19 and journal.head == 20
    assert [r["seq"] for r in journal.read(0, 100)] == list(range(1, 20))
    journal.commit()
    records = journal.read(0, 100)
    assert [r["seq"] for r in records] == list(range(1, 21))
    assert [r["step"] for r in records] == list(range(20))
    assert [r["seq"] for r in journal.read(2, 3)] == [3, 4, 5]  # from disk (out of the tail)
    assert [r["seq"] for r in journal.read(18, 10)] == [19, 20]  # from memory
    assert journal.read(20) == []
    journal.close()

    again = Journal(tmp_path / "j.log", fsync=False)
    assert [r["seq"] for r in again.load()] == list(range(1, 21))
    assert again.published == 20
    with pytest.raises(ValueError):
        again.append("nonsense")
    again.close()


def test_unpublished_records_are_invisible(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.log", fsync=False)
    list(journal.load())
    journal.append("status", status="IN_QUEUE")
    assert journal.read(0) == []
    journal.commit()
    assert len(journal.read(0)) == 1


@settings(max_examples=30, deadline=None)
@given(cut=st.integers(min_value=1, max_value=200), garbage=st.binary(max_size=20))
def test_a_torn_tail_is_truncated_on_open(
    tmp_path_factory: pytest.TempPathFactory, cut: int, garbage: bytes
) -> None:
    path = tmp_path_factory.mktemp("torn") / "j.log"
    journal = Journal(path, fsync=False)
    list(journal.load())
    for i in range(5):
        journal.append("progress", item=i, step=1, steps=1)
    journal.commit()
    journal.close()
    whole = path.stat().st_size
    with open(path, "r+b") as f:  # tear the last record (or more) and append junk
        f.truncate(max(0, whole - cut))
        f.seek(0, os.SEEK_END)
        f.write(garbage)
    reopened = Journal(path, fsync=False)
    seqs = [r["seq"] for r in reopened.load()]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) <= 5
    reopened.append("done", status="COMPLETED", items=0, errors=0)
    reopened.commit()
    reopened.close()
    final = Journal(path, fsync=False)
    assert [r["seq"] for r in final.load()] == list(range(1, len(seqs) + 2))
    final.close()


def test_record_log_appends_many_in_one_write(tmp_path: Path) -> None:
    log = RecordLog(tmp_path / "w.log", fsync=False)
    list(log.scan())
    offsets = log.append([{"a": i, "b": b"x" * i} for i in range(10)])
    assert offsets[0] == 0 and offsets == sorted(offsets)
    assert [r["a"] for r in log.read_at(offsets[3], 3)] == [3, 4, 5]
    log.close()


def test_media_sink_writes_verifies_renames(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    digest = hashlib.sha256(data).hexdigest()
    sink = MediaSink(tmp_path, 3, "../../evil id", "video/mp4", len(data), fsync=True, replaying=False)
    assert sink.final.parent == tmp_path and sink.final.name == "00003-evil_id.mp4"
    sink.write(50_000, data[50_000:])  # out of order
    sink.write(0, data[:50_000])
    ok, path = sink.finish(digest)
    assert ok and path.read_bytes() == data and not sink.temp.exists()

    bad = MediaSink(tmp_path, 4, "", "image/png", 3, fsync=False, replaying=False)
    bad.write(0, b"abc")
    assert bad.finish("0" * 64) == (False, None)
    assert not bad.temp.exists() and not bad.final.exists()


def test_media_sink_resumes_after_a_restart(tmp_path: Path) -> None:
    data = os.urandom(30_000)
    first = MediaSink(tmp_path, 0, "a", "video/mp4", len(data), fsync=False, replaying=False)
    first.write(0, data[:10_000])
    del first  # the process died here
    resumed = MediaSink(tmp_path, 0, "a", "video/mp4", len(data), fsync=False, replaying=True)
    resumed.write(0, b"\0" * 10_000)  # replayed: ignored, the bytes are on disk
    resumed.replaying = False
    resumed.write(10_000, data[10_000:])
    ok, path = resumed.finish(hashlib.sha256(data).hexdigest())
    assert ok and path.read_bytes() == data
    # replaying an item that was finished before the restart reports what is on disk
    done = MediaSink(tmp_path, 0, "a", "video/mp4", len(data), fsync=False, replaying=True)
    assert done.finish("ignored") == (True, path)


def test_job_ids_are_validated() -> None:
    for good in ("abc", "8d4a-e1", "sync-1.2_x:y"):
        assert check_job_id(good) == good
    for bad in ("", "../x", "a/b", ".hidden", "a..b", "x" * 129, "-x", "a b", "abc\n"):
        with pytest.raises(BadJobId):
            check_job_id(bad)


def test_store_lists_opens_and_deletes_jobs(tmp_path: Path) -> None:
    store = Store(tmp_path, fsync=False)
    job = store.create("job-1", source="attach")
    job.record(
        [("status", {"status": "IN_QUEUE"}), ("item", {"item": 0, "_file": "1/00000.mp4", "url": "u"})]
    )
    assert job.status == "" and job.items == {}  # summaries follow what is published
    job.commit()
    assert job.status == "IN_QUEUE" and 0 in job.items
    assert public(job.items[0]) == {"seq": 2, "k": "item", "item": 0, "url": "u"}
    assert job.media_path({"_file": "../../../etc/passwd"}) is None
    job.record([("done", {"status": "COMPLETED", "items": 1, "errors": 0})])
    job.commit()
    assert job.meta["finished_at"] and job.finished
    job.close()
    assert store.job_ids() == ["job-1"] and store.finished_at("job-1")
    reopened = store.open("job-1")
    assert reopened.finished and reopened.meta["source"] == "attach"
    reopened.close()
    store.delete("job-1")
    assert store.job_ids() == [] and not store.exists("job-1")
    with pytest.raises(KeyError):
        store.open("job-1")


# ------------------------------------------------------------------------------ disk quota and deletion


def test_disk_quota_reserves_evicts_then_refuses() -> None:
    asked: list[int] = []

    def evict(needed: int) -> int:
        asked.append(needed)
        quota.forget("old")
        return 60

    quota = DiskQuota(100, evict)
    quota.set_measured({"old": 60})
    quota.reserve("new", 30)
    assert quota.used == 90 and asked == []
    quota.reserve("new", 40)  # 130 > 100: the evictor frees "old", then it fits
    assert asked == [30] and quota.used == 70 and quota.job_bytes("new") == 70
    with pytest.raises(QuotaExceeded, match="disk quota"):
        quota.reserve("new", 50)
    quota.release("new", 40)  # abandoned
    quota.release("new", 30, stored=True)  # on disk now
    assert quota.used == 30
    quota.set_measured({"new": 35})  # the next measurement replaces the estimate
    assert quota.used == 35 and quota.forget("new") == 35 and quota.used == 0


def test_refused_items_write_nothing_and_end_as_quota_errors(tmp_path: Path) -> None:
    store = Store(tmp_path, fsync=False, quota=DiskQuota(10)).create("job-1")
    directory = store.media_dir(1)
    sink = store.media_sink(directory, 0, "a", "image/png", 50, replaying=False)
    sink.write(0, b"x" * 50)
    assert sink.finish("0" * 64)[0] is True and not list(directory.iterdir())
    [record] = store.record([("item", {"item": 0, "id": "a", "mime": "image/png", "size": 50, "url": "u"})])
    assert record["k"] == "error" and record["code"] == "quota_exceeded" and record["item"] == 0
    small = store.media_sink(directory, 1, "b", "image/png", 5, replaying=False)  # fits
    small.write(0, b"12345")
    assert small.finish(hashlib.sha256(b"12345").hexdigest())[0] is True
    assert store.quota.used == 5
    store.close()


def test_a_retired_store_stays_open_for_its_readers(tmp_path: Path) -> None:
    root = Store(tmp_path, fsync=False)
    store = root.create("job-1")
    store.record([("status", {"status": "IN_PROGRESS"})])
    store.commit()
    with store.reading():
        target = root.trash("job-1")
        store.retire()
        assert not root.exists("job-1") and root.job_ids() == []
        assert not store.closed and store.journal.read(0, 10)[0]["status"] == "IN_PROGRESS"
    assert store.closed
    assert target is not None and target.parent == tmp_path / "trash"
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (target / "link").symlink_to(outside)  # a symlink in a job directory is removed, never followed
    Store.remove(target)
    assert not target.exists() and outside.read_text() == "keep"


# ------------------------------------------------------------------------------ media: gone or try again


def stored_item(tmp_path: Path, data: bytes) -> tuple[Store, dict[str, object]]:
    """A job with one stored item, reopened (so its file is not known to be verified in this process)."""
    root = Store(tmp_path, fsync=False)
    job = root.create("job-1")
    directory = job.media_dir(1)
    (directory / "00000-a.mp4").write_bytes(data)
    fields = {"item": 0, "id": "a", "mime": "video/mp4", "size": len(data)}
    job.record([("item", {**fields, "sha256": hashlib.sha256(data).hexdigest(), "_file": "1/00000-a.mp4"})])
    job.commit()
    job.close()
    return root, root.open("job-1").items[0]


def test_check_media_tells_gone_from_try_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from relay.storage.errors import MediaGone, MediaRetry

    data = os.urandom(5000)
    root, record = stored_item(tmp_path, data)
    job = root.open("job-1")
    path = tmp_path / "jobs" / "job-1" / "media" / "1" / "00000-a.mp4"

    def emfile(_path: Path) -> str:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr("relay.storage.local.store.sha256_file", emfile)
    with pytest.raises(MediaRetry, match="Too many open files"):
        job.check_media(record)  # the file is there: a passing error says "try again"
    monkeypatch.undo()
    assert job.check_media(record) == path  # and it is served once the error passes
    assert job.check_media({**record, "_file": ""}) is None  # a ref: no file here

    damaged = bytearray(data)
    damaged[100] ^= 1
    again = root.open("job-1")  # a new process would not know the file was verified
    path.write_bytes(bytes(damaged))
    with pytest.raises(MediaGone, match="damaged"):
        again.check_media(record)
    [kept] = list((tmp_path / "jobs" / "job-1" / "quarantine").iterdir())
    assert kept.read_bytes() == bytes(damaged) and not path.exists()
    with pytest.raises(MediaGone, match="no longer available"):
        again.check_media(record)
    job.close()
    again.close()


async def test_a_passing_read_error_makes_the_subscriber_reconnect_not_skip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EMFILE while the relay reads an item's bytes for a subscriber: `bye 4005` (reconnect class), and the
    subscriber that resumes from its last applied seq gets the item whole; no `media_unavailable`."""
    import errno

    from podstream.emulator import Emulator, EmulatorConfig
    from relay import hub
    from tests.relay.conftest import (
        Received,
        ScriptedWorker,
        consume,
        pack,
        recv,
        relay_settings,
        start_relay,
        ws_client,
    )
    from tests.relay.test_service import submit_and_run

    async with Emulator(EmulatorConfig.for_tests()).serve(host="127.0.0.1", port=0) as emu:
        worker = ScriptedWorker(emu)
        relay = await start_relay(relay_settings(tmp_path, emu, chunk_cache_bytes=0))
        try:
            files = [os.urandom(70_000), os.urandom(80_000)]
            _status, created = await submit_and_run(relay, worker, files)
            job = created["id"]
            original = hub._encode
            calls: list[int] = []

            def flaky(path: Path, head: dict[str, object], offset: int, length: int, size: int) -> bytes:
                calls.append(offset)
                if len(calls) == 2:  # the second item's bytes (os.open: EMFILE)
                    raise OSError(errno.EMFILE, "Too many open files")
                return original(path, head, offset, length, size)

            monkeypatch.setattr(hub, "_encode", flaky)
            got = Received()
            async with ws_client(relay.ws_url, relay.token(job)) as ws:
                await ws.send(pack({"t": "sub", "job": job, "from": 0}))
                assert (await recv(ws))["t"] == "subscribed"
                with pytest.raises(ConnectionAbortedError):
                    await consume(ws, job, got)
            assert got.closed_code == 4005 and 4000 <= got.closed_code < 4500
            resumed = Received(last_applied=got.last_applied)
            async with ws_client(relay.ws_url, relay.token(job)) as ws:
                await ws.send(pack({"t": "sub", "job": job, "from": got.last_applied}))
                assert (await recv(ws))["t"] == "subscribed"
                await consume(ws, job, resumed)
            assert {i: bytes(b) for i, b in got.files.items() if i != 1} == {0: files[0]}
            assert {i: bytes(b) for i, b in resumed.files.items()} == {1: files[1]}  # whole, not skipped
        finally:
            await relay.stop()
            await worker.close()


async def test_media_over_http_says_try_again_for_a_passing_error_and_gone_for_a_missing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from podstream.emulator import Emulator, EmulatorConfig
    from relay.storage.local import media
    from tests.relay.conftest import ScriptedWorker, relay_settings, start_relay
    from tests.relay.test_service import submit_and_run

    async with Emulator(EmulatorConfig.for_tests()).serve(host="127.0.0.1", port=0) as emu:
        worker = ScriptedWorker(emu)
        files = [os.urandom(30_000), os.urandom(20_000)]
        first = await start_relay(relay_settings(tmp_path, emu))
        try:
            _status, created = await submit_and_run(first, worker, files)
        finally:
            await first.stop()
        job = created["id"]
        relay = await start_relay(relay_settings(tmp_path, emu))  # its files are not verified in this process
        try:
            original = media.sha256_file
            failures = [OSError(errno.EMFILE, "Too many open files")]

            def flaky(path: Path) -> str:
                if failures:
                    raise failures.pop()
                return original(path)

            monkeypatch.setattr("relay.storage.local.store.sha256_file", flaky)
            async with relay.http() as http:
                url = f"{relay.url}/v1/jobs/{job}/media/0"
                busy = await http.get(url)
                assert busy.status_code == 503 and busy.json()["error"]["code"] == "try_again"
                assert busy.headers["retry-after"] == "1"
                ok = await http.get(url)
                assert ok.status_code == 200 and ok.content == files[0]
                next((tmp_path / "data" / "jobs" / job / "media" / "1").glob("00001-*")).unlink()
                gone = await http.get(f"{relay.url}/v1/jobs/{job}/media/1")
                assert gone.status_code == 410 and "no longer available" in gone.json()["error"]["message"]
        finally:
            await relay.stop()
            await worker.close()


def test_media_path_stays_inside_media_and_resolves_each_file_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = Store(tmp_path, fsync=False).create("job-1", source="attach")
    (tmp_path / "outside").mkdir()
    os.symlink(tmp_path / "outside", job.media / "9")  # a run directory that leads out of the job
    for bad in ("../../../etc/passwd", "1/../../x.mp4", "/etc/passwd", "x.mp4", "1/2/x.mp4", "9/x.mp4"):
        assert job.media_path({"_file": bad}) is None, bad
    assert job.media_path({"_file": ""}) is None and job.media_path({}) is None
    resolved: list[Path] = []
    resolve = Path.resolve

    def counting(self: Path, strict: bool = False) -> Path:
        resolved.append(self)
        return resolve(self, strict)

    monkeypatch.setattr(Path, "resolve", counting)
    path = job.media_path({"_file": "1/00000.mp4"})
    assert path == job.media / "1" / "00000.mp4"
    for _ in range(10):  # every subscriber, every item: the same answer without resolving again
        assert job.media_path({"_file": "1/00000.mp4"}) == path
    assert resolved == [path]
    assert job.media_path({"_file": "9/x.mp4"}) is None  # a refused name is not remembered as good
