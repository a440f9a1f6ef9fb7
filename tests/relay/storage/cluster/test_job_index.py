"""The job index against a real redis-server: create once, metadata, retention deadlines, delete."""

from __future__ import annotations

from typing import Any

import redis

from relay.storage.cluster.fenced_stream import FencedStream
from relay.storage.cluster.job_index import RedisJobIndex
from relay.storage.cluster.lease import RedisLeases


def test_a_job_is_created_once_and_listed(rclient: redis.Redis) -> None:
    index = RedisJobIndex(rclient)
    assert index.job_ids() == [] and index.meta("a") is None and not index.exists("a")
    assert index.create("b", {"job": "b", "created_at": 2.0, "source": "submit"})
    assert index.create("a", {"job": "a", "created_at": 1.0, "source": "attach"})
    assert not index.create("a", {"job": "a", "created_at": 9.0, "source": "other replica"})
    assert index.meta("a") == {"job": "a", "created_at": 1.0, "source": "attach"}
    assert index.job_ids() == ["a", "b"] and index.exists("b")
    assert index.active() == ["a", "b"]  # not finished: each needs a poller
    index.update("a", {"job": "a", "created_at": 1.0, "finished_at": 3.0})
    assert index.active() == ["b"] and index.job_ids() == ["a", "b"]


def test_finished_jobs_with_a_retention_expire(rclient: redis.Redis) -> None:
    index = RedisJobIndex(rclient)
    index.create("keep", {"created_at": 1.0})
    index.create("short", {"created_at": 1.0})
    index.update("keep", {"created_at": 1.0, "finished_at": 100.0})  # no retention: never expires
    index.update("short", {"created_at": 1.0, "finished_at": 100.0, "retention_s": 50.0})
    assert index.meta("short") == {"created_at": 1.0, "finished_at": 100.0, "retention_s": 50.0}
    assert index.active() == []
    assert index.expired(149.0) == [] and index.expired(150.0) == ["short"]


def test_delete_forgets_every_key_of_the_job(rclient: redis.Redis) -> None:
    index = RedisJobIndex(rclient)
    leases = RedisLeases(rclient, "a")
    index.create("job", {"created_at": 1.0})
    index.update("job", {"created_at": 1.0, "finished_at": 2.0, "retention_s": 1.0})
    lease = leases.acquire("job")
    assert lease is not None
    FencedStream(rclient, index.keys.journal("job"), index.keys.fence("job")).append(
        lease.token, 1, [{"n": 1}]
    )
    index.create("other", {"created_at": 1.0})
    index.delete("job")
    assert index.job_ids() == ["other"] and index.meta("job") is None and index.expired(10.0) == []
    keys: Any = rclient.keys("*")
    assert sorted(k.decode() for k in keys) == [
        "podstream:active",
        "podstream:jobs",
        "podstream:{other}:meta",
    ]
