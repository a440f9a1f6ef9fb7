"""relay.api.limits: the per-key sliding window (the 429 itself is tested over HTTP in test_auth.py)."""

from __future__ import annotations

import pytest

from relay.api.limits import PerKeyRate, RateLimited


def test_per_key_sliding_window() -> None:
    now = [1000.0]
    rate = PerKeyRate(2, 60, clock=lambda: now[0])
    rate.take("a")
    rate.take("a")
    rate.take("b")  # keys are independent
    with pytest.raises(RateLimited) as limited:
        rate.take("a")
    assert limited.value.retry_after == 60
    now[0] += 30
    with pytest.raises(RateLimited) as limited:
        rate.take("a")  # a refused call is not counted
    assert limited.value.retry_after == 30
    now[0] += 30.5
    rate.take("a")
    rate.take("a")
