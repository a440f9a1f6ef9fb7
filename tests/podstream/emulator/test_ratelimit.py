from __future__ import annotations

from podstream.emulator import RateLimit
from podstream.emulator.ratelimit import RateLimiter


def test_window_and_concurrency() -> None:
    limiter = RateLimiter({"status": RateLimit(2, window_s=10), "stream": RateLimit(100, concurrent=1)})
    assert limiter.acquire("status", now=0) and limiter.acquire("status", now=1)
    assert not limiter.acquire("status", now=5)
    assert limiter.acquire("status", now=10.5)  # the first hit left the window
    assert limiter.acquire("stream", now=0)
    assert not limiter.acquire("stream", now=0)  # one in flight already
    limiter.release("stream")
    assert limiter.acquire("stream", now=0)
    assert all(limiter.acquire("health") for _ in range(1000))  # unlimited route
