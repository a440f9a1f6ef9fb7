"""Leases against a real redis-server: one holder at a time, fencing tokens, expiry and takeover."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from relay.storage.cluster.lease import RedisLeases
from relay.storage.protocols import Lease
from tests.relay.storage.conftest import RedisServer


def test_one_holder_and_a_new_token_for_each_new_holder(rclient: redis.Redis) -> None:
    a, b = RedisLeases(rclient, "replica-a"), RedisLeases(rclient, "replica-b")
    first = a.acquire("job-1")
    assert first == Lease("job-1", "replica-a", 1)
    assert b.acquire("job-1") is None and a.acquire("job-1") is None  # held: nobody else, not even again
    assert b.holder_of("job-1") == ("replica-a", 1)
    assert a.release(first)
    second = b.acquire("job-1")
    assert second == Lease("job-1", "replica-b", 2)  # the fence moved on
    assert not a.release(first) and not a.renew(first)  # the old lease cannot touch the new one
    assert b.holder_of("job-1") == ("replica-b", 2) and a.fence("job-1") == 2
    assert a.acquire("job-2") == Lease("job-2", "replica-a", 1)  # names are independent


def test_an_expired_lease_is_taken_over_and_cannot_be_renewed(rclient: redis.Redis) -> None:
    a, b = RedisLeases(rclient, "replica-a", ttl_s=0.2), RedisLeases(rclient, "replica-b", ttl_s=0.2)
    lease = a.acquire("job")
    assert lease is not None and a.renew(lease)
    assert rclient.pttl(a.keys.lease("job")) > 0
    taken = None
    while taken is None:  # the holder stopped renewing (died, paused): the lease runs out
        time.sleep(0.05)
        taken = b.acquire("job")
    assert taken.token == lease.token + 1
    assert not a.renew(lease)
    assert b.holder_of("job") == ("replica-b", taken.token)


def test_racing_replicas_get_one_lease(redis_server: RedisServer) -> None:
    """Sixteen replicas (own connections, own threads) race for the same job: exactly one wins."""
    winners: list[Lease] = []
    start = threading.Barrier(16)

    def race(n: int) -> None:
        client = redis_server.client()
        leases = RedisLeases(client, f"replica-{n}")
        start.wait()
        lease = leases.acquire("job")
        if lease is not None:
            winners.append(lease)
        client.close()

    threads = [threading.Thread(target=race, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and winners[0].token == 1


def test_a_holder_name_with_the_separator_is_refused(rclient: redis.Redis) -> None:
    with pytest.raises(ValueError, match=r"without '\|'"):
        RedisLeases(rclient, "a|b")
    with pytest.raises(ValueError):
        RedisLeases(rclient, "")
