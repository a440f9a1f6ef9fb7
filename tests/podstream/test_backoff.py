"""podstream.backoff: the one exponential-backoff-with-full-jitter used by the CLI, the relay and the emulator."""

from __future__ import annotations

import random

import pytest

from podstream.backoff import Backoff, retry_after_seconds


def test_ceiling_doubles_up_to_the_cap_and_jitter_scales_it() -> None:
    b = Backoff(0.5, 4.0)
    assert [b.ceiling(n) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert [b.delay(n, lambda: 1.0) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert b.delay(3, lambda: 0.0) == 0.0
    assert b.delay(10**6, lambda: 0.5) == 2.0  # huge attempt counts do not overflow
    draws = [b.delay(2, random.Random(7).random) for _ in range(3)]
    assert all(0.0 <= d <= 2.0 for d in draws)


def test_retry_after_is_a_floor_with_a_cap() -> None:
    b = Backoff(0.5, 4.0)
    assert b.delay(0, lambda: 1.0, retry_after=3.0) == 3.0  # the server asked for longer
    assert b.delay(3, lambda: 1.0, retry_after=1.0) == 4.0  # the backoff is already longer
    assert b.delay(0, lambda: 1.0, retry_after=10_000, max_retry_after=60) == 60
    assert b.delay(0, lambda: 0.0, retry_after=-5) == 0.0


def test_retry_after_header_parsing() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(" 1.5 ") == 1.5
    assert retry_after_seconds(None) is None and retry_after_seconds("") is None
    assert retry_after_seconds("soon") is None and retry_after_seconds("nan") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412500.0) == 0.0  # in the past


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        Backoff(-1.0, 4.0)
