"""Readiness probes with deadlines (relay/storage/cluster/health.py): probes that hang, fail, recover; failures held
by the work itself; the spool probe on a real directory. (A SIGSTOPped Redis and bucket behind a real
replica's /readyz: test_replica.py.)"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.storage.cluster.health import Probe, Readiness, Unusable, spool_check


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def settled(readiness: Readiness, name: str) -> None:
    """Until the probe of `name` is no longer in flight (its answer taken in on the loop)."""
    for _ in range(200):
        if readiness.probes[name].running is None:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the probe of {name} is still in flight")


def failing_until(event: threading.Event) -> Callable[[], None]:
    def check() -> None:
        if not event.is_set():
            raise Unusable("cannot reach it: refused")

    return check


async def test_a_probe_that_hangs_is_not_ready_after_its_deadline_and_ready_once_it_answers() -> None:
    clock, answer = Clock(), threading.Event()

    def ping() -> None:
        answer.wait(10)

    hung = Readiness([Probe("Redis", ping)], deadline_s=3, clock=clock)
    try:
        hung.tick()
        clock.now += 2.9
        assert hung.problem is None, "within its deadline"
        clock.now += 0.2
        assert hung.problem == "Redis did not answer within 3 s"
        hung.tick()  # no second probe while one hangs
        assert hung.probes["Redis"].running is not None
        answer.set()
        await settled(hung, "Redis")
        assert hung.problem is None
    finally:
        answer.set()
        hung.close()


async def test_a_failing_probe_says_why_until_one_succeeds() -> None:
    clock, up = Clock(), threading.Event()
    readiness = Readiness([Probe("the bucket", failing_until(up)), Probe("Redis", lambda: None)], clock=clock)
    try:
        readiness.tick()
        await settled(readiness, "the bucket")
        assert readiness.problem == "cannot reach it: refused"
        assert readiness.failing("the bucket") and not readiness.failing("Redis")
        up.set()
        readiness.tick()
        await settled(readiness, "the bucket")
        assert readiness.problem is None
    finally:
        readiness.close()


async def test_a_held_failure_counts_for_its_hold_time_and_until_a_probe_succeeds() -> None:
    clock, writable = Clock(), threading.Event()
    readiness = Readiness([Probe("spool", failing_until(writable))], clock=clock)
    try:
        writable.set()
        readiness.hold("spool", "cannot write the spool: No space left on device", hold_s=6)
        readiness.tick()
        await settled(readiness, "spool")
        assert readiness.problem == "cannot write the spool: No space left on device", "held for 6 s"
        clock.now += 6.5
        assert readiness.failing("spool"), "held until a probe after the hold succeeds"
        writable.clear()
        readiness.tick()
        await settled(readiness, "spool")
        assert readiness.failing("spool")
        writable.set()
        readiness.tick()
        await settled(readiness, "spool")
        assert readiness.problem is None
    finally:
        readiness.close()


async def test_probes_that_stopped_running_are_not_ready() -> None:
    clock = Clock()
    readiness = Readiness([Probe("Redis", lambda: None)], interval_s=2, deadline_s=3, clock=clock)
    try:
        readiness.tick()
        await settled(readiness, "Redis")
        clock.now += 7.5
        assert readiness.problem is None
        clock.now += 1
        assert readiness.problem == "readiness not checked for 8 s"
    finally:
        readiness.close()


def test_the_spool_probe_allocates_a_file_and_leaves_nothing(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    spool_check(spool)()
    assert list(spool.iterdir()) == []
    spool.rmdir()
    spool.write_bytes(b"")  # a file where the directory was: nothing can be created in it
    with pytest.raises(Unusable, match=r"cannot write the spool .*: Not a directory"):
        spool_check(spool)()
    spool.unlink()
    with pytest.raises(Unusable, match="No such file or directory"):
        spool_check(spool)()
