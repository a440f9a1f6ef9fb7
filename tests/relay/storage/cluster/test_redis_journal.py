"""RedisJournal against a real redis-server: the `relay.storage.local.store.Journal` contract, fenced."""

from __future__ import annotations

import pytest
import redis

from relay.storage.cluster.fenced_stream import Fenced, FencedStream
from relay.storage.cluster.keys import Keys
from relay.storage.cluster.lease import RedisLeases
from relay.storage.cluster.redis_journal import ReadOnly, RedisIngestLog, RedisJournal
from relay.storage.local.journal import Journal
from relay.storage.local.records import RecordLog
from relay.storage.protocols import IngestLog, JournalBackend


def journal_stream(client: redis.Redis, job: str = "job") -> FencedStream:
    return FencedStream(client, Keys().journal(job), Keys().fence(job))


def test_both_journals_fit_the_seam(tmp_path: object, rclient: redis.Redis) -> None:
    from pathlib import Path

    backends: list[JournalBackend] = [
        Journal(Path(str(tmp_path)) / "journal.log", fsync=False),
        RedisJournal(journal_stream(rclient), token=None),
    ]
    logs: list[IngestLog] = [RecordLog(Path(str(tmp_path)) / "wire.log", fsync=False)]
    assert len(backends) == 2 and len(logs) == 1  # mypy checks the structural fit


def test_records_are_visible_only_after_commit_and_other_replicas_follow(rclient: redis.Redis) -> None:
    lease = RedisLeases(rclient, "a").acquire("job")
    assert lease is not None
    writer = RedisJournal(journal_stream(rclient), token=lease.token, tail=2)
    assert list(writer.load()) == []
    writer.extend([("status", {"status": "IN_PROGRESS"}), ("progress", {"item": 0, "step": 1, "steps": 2})])
    assert writer.head == 2 and writer.published == 0 and writer.read(0) == []
    reader = RedisJournal(journal_stream(rclient), token=None, tail=2)
    assert list(reader.load()) == []  # nothing in Redis before the commit
    assert writer.commit() == 2
    assert [r["seq"] for r in writer.read(0)] == [1, 2]
    assert reader.wait(5000) == 2 and [r["k"] for r in reader.read(0)] == ["status", "progress"]
    for n in range(3, 11):
        writer.append("progress", item=0, step=n, steps=10)
        writer.commit()
    assert reader.refresh() == 10
    # older than the in-memory tail: read back from Redis, same records
    assert [r["seq"] for r in reader.read(0, 4)] == [1, 2, 3, 4]
    assert reader.read(8, 100) == writer.read(8, 100) and [r["seq"] for r in reader.read(8)] == [9, 10]
    reopened = RedisJournal(journal_stream(rclient), token=None)
    assert [r["seq"] for r in reopened.load()] == list(range(1, 11)) and reopened.published == 10
    with pytest.raises(ReadOnly):
        reader.append("progress", item=0, step=1, steps=1)
    with pytest.raises(ValueError, match="unknown record kind"):
        writer.append("nonsense")


def test_a_fenced_commit_publishes_nothing(rclient: redis.Redis) -> None:
    a, b = RedisLeases(rclient, "a"), RedisLeases(rclient, "b")
    old = a.acquire("job")
    assert old is not None
    stale = RedisJournal(journal_stream(rclient), token=old.token)
    list(stale.load())
    stale.append("status", status="IN_PROGRESS")
    stale.commit()
    rclient.delete(a.keys.lease("job"))
    new = b.acquire("job")
    assert new is not None
    successor = RedisJournal(journal_stream(rclient), token=new.token)
    assert len(list(successor.load())) == 1
    stale.append("item", item=0, id="x")
    with pytest.raises(Fenced):
        stale.commit()
    assert stale.published == 1 and stale.head == 1 and stale.read(0, 10)[-1]["seq"] == 1
    successor.append("done", status="COMPLETED", items=0, errors=0)
    assert successor.commit() == 2
    assert [r["k"] for r in RedisJournal(journal_stream(rclient), token=None).load()] == ["status", "done"]


def test_the_ingest_log_is_written_at_sync_and_fenced(rclient: redis.Redis) -> None:
    keys = Keys()
    a, b = RedisLeases(rclient, "a"), RedisLeases(rclient, "b")
    old = a.acquire("job")
    assert old is not None
    wire = RedisIngestLog(FencedStream(rclient, keys.wire("job"), keys.fence("job")), token=old.token)
    assert wire.append([{"e": {"seq": 1}}, {"e": {"seq": 2}}]) == [1, 2]
    assert list(wire.scan()) == []
    wire.sync()
    assert [r["e"]["seq"] for _n, r in wire.scan()] == [1, 2]
    rclient.delete(keys.lease("job"))
    assert b.acquire("job") is not None
    wire.append([{"e": {"seq": 3}}])
    with pytest.raises(Fenced):
        wire.sync()
    follower = RedisIngestLog(FencedStream(rclient, keys.wire("job"), keys.fence("job")), token=None)
    assert [r["e"]["seq"] for _n, r in follower.scan()] == [1, 2]
    with pytest.raises(ReadOnly):
        follower.append([{"e": {}}])
