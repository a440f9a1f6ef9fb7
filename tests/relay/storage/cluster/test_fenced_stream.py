"""Fenced appends against a real redis-server: a stale token or an out-of-place batch changes nothing."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from relay.storage.cluster.fenced_stream import Fenced, FencedStream, OutOfSequence
from relay.storage.cluster.keys import Keys
from relay.storage.cluster.lease import RedisLeases
from tests.relay.storage.conftest import RedisServer


def stream(client: redis.Redis, job: str = "job") -> FencedStream:
    keys = Keys()
    return FencedStream(client, keys.journal(job), keys.fence(job))


def test_appends_get_dense_ids_and_read_back_in_order(rclient: redis.Redis) -> None:
    lease = RedisLeases(rclient, "a").acquire("job")
    assert lease is not None
    s = stream(rclient)
    assert s.last() == 0 and s.read(0, 10) == []
    assert s.append(lease.token, 1, [{"n": 1}, {"n": 2, "b": b"\x00\xff"}]) == 2
    assert s.append(lease.token, 3, [{"n": 3}]) == 3
    assert s.read(0, 10) == [(1, {"n": 1}), (2, {"n": 2, "b": b"\x00\xff"}), (3, {"n": 3})]
    assert s.read(1, 1) == [(2, {"n": 2, "b": b"\x00\xff"})]
    assert [n for n, _ in s.scan(batch=2)] == [1, 2, 3]
    entries: Any = rclient.xrange(s.key)
    assert [entry_id for entry_id, _ in entries] == [b"1-0", b"2-0", b"3-0"]
    assert s.append(lease.token, 4, []) == 3


def test_a_stale_holder_cannot_append(rclient: redis.Redis) -> None:
    """Replica a's lease ran out (a GC pause), b took the job over: a's late batch is refused whole."""
    a, b = RedisLeases(rclient, "a", ttl_s=0.05), RedisLeases(rclient, "b")
    old = a.acquire("job")
    assert old is not None
    s = stream(rclient)
    s.append(old.token, 1, [{"by": "a"}])
    rclient.delete(a.keys.lease("job"))  # as if it expired
    new = b.acquire("job")
    assert new is not None and new.token > old.token
    with pytest.raises(Fenced, match=f"token {old.token} is stale"):
        s.append(old.token, 2, [{"by": "a, late"}, {"by": "a, later"}])
    assert s.append(new.token, 2, [{"by": "b"}]) == 2
    assert s.read(0, 10) == [(1, {"by": "a"}), (2, {"by": "b"})]
    with pytest.raises(Fenced):
        s.append(0, 3, [{"by": "never leased"}])


def test_a_batch_out_of_sequence_is_refused(rclient: redis.Redis) -> None:
    lease = RedisLeases(rclient, "a").acquire("job")
    assert lease is not None
    s = stream(rclient)
    s.append(lease.token, 1, [{"n": 1}])
    with pytest.raises(OutOfSequence, match="next entry is 2, not 3"):
        s.append(lease.token, 3, [{"n": 3}])
    with pytest.raises(OutOfSequence, match="next entry is 2, not 1"):
        s.append(lease.token, 1, [{"n": "again"}])
    assert s.read(0, 10) == [(1, {"n": 1})]


def test_wait_wakes_on_the_next_append(rclient: redis.Redis, redis_server: RedisServer) -> None:
    lease = RedisLeases(rclient, "a").acquire("job")
    assert lease is not None
    s = stream(rclient)
    assert s.wait(0, 10) == 0  # nothing came
    woke: list[int] = []
    other = redis_server.client()  # another replica's connection, blocked in XREAD
    reader = threading.Thread(target=lambda: woke.append(stream(other).wait(0, 30_000)))
    reader.start()
    s.append(lease.token, 1, [{"n": 1}, {"n": 2}])
    reader.join()
    other.close()
    assert woke == [2]
