"""The journal seam's contract, run against both implementations: local disk and Redis (real server).

The same sequence of batches, commits and reads gives the same records on both; a reopened journal reads
back exactly what was committed; nothing uncommitted is ever read."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.storage.cluster.fenced_stream import FencedStream
from relay.storage.cluster.keys import Keys
from relay.storage.cluster.lease import RedisLeases
from relay.storage.cluster.redis_journal import RedisJournal
from relay.storage.local.journal import Journal
from relay.storage.protocols import JournalBackend

Factory = Callable[[str], JournalBackend]
JOB_NUMBERS = itertools.count()


@pytest.fixture(params=["disk", "redis"])
def journals(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    """A factory of journals by name: the writer, then readers opening the same job's journal."""
    if request.param == "disk":
        yield lambda name: Journal(tmp_path / f"{name}.log", fsync=False, tail=3)
        return
    client: redis.Redis = request.getfixturevalue("rclient")
    leases = RedisLeases(client, "writer")
    tokens: dict[str, int] = {}

    def make(name: str) -> JournalBackend:
        keys = Keys()
        if name not in tokens:
            lease = leases.acquire(name)
            assert lease is not None
            tokens[name] = lease.token
            return RedisJournal(
                FencedStream(client, keys.journal(name), keys.fence(name)), token=lease.token, tail=3
            )
        return RedisJournal(FencedStream(client, keys.journal(name), keys.fence(name)), token=None, tail=3)

    yield make


batches = st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=12)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=batches)
def test_the_same_plan_gives_the_same_journal(journals: Factory, plan: list[tuple[int, bool]]) -> None:
    name = f"job-{next(JOB_NUMBERS)}"  # a new job per example (hypothesis repeats values while shrinking)
    writer = journals(name)
    assert list(writer.load()) == []
    committed: list[dict[str, object]] = []
    pending: list[dict[str, object]] = []
    step = 0
    for size, commit in plan:
        records = writer.extend(
            [("progress", {"item": 0, "step": step + n, "steps": 99}) for n in range(size)]
        )
        step += size
        pending.extend(records)
        assert writer.read(0, 1000) == committed  # nothing uncommitted is visible
        if commit:
            assert writer.commit() == len(committed) + len(pending)
            committed.extend(pending)
            pending.clear()
    writer.commit()
    committed.extend(pending)
    assert [r["seq"] for r in committed] == list(range(1, len(committed) + 1))
    assert writer.read(0, 1000) == committed
    for after in range(0, len(committed) + 1, 2):
        assert writer.read(after, 2) == committed[after : after + 2]
    writer.close()
    reader = journals(name)
    assert list(reader.load()) == committed and reader.published == len(committed)
    reader.close()
