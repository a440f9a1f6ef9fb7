"""Many connections: idle, authenticated websocket subscribers held by one relay, its RSS and fds.

One relay process with auth on (an API key; subscribers authenticate with a job-scoped token in their
`auth` frame, as browsers do) and one live job with a record. Subscribers connect in steps, each one
authenticating, subscribing to the job and reading its first record (so every one is a live subscription,
not just a socket), then staying idle (answering the relay's pings). After each step the relay's RSS and
open descriptors are read from /proc. The cost per extra subscriber is the slope of RSS against
subscribers between the first and the last step (least squares over the steps).

File descriptors: each subscriber costs the relay one and this process one. The soft RLIMIT_NOFILE is
raised to the hard limit here, before the relay is started (it inherits it); both limits in force are
reported. When the limit is what stops the run, it says so (the relay refuses connections past its budget,
`RLIMIT_NOFILE` less `FD_RESERVE`, see docs/relay.md).

    python -m bench.relay_idle                        # 2,000 subscribers (the short form)
    python -m bench.relay_idle --subscribers 10000    # the full form (issue 16, item 4: under 1 GB)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import secrets
import time
from typing import Any

import msgpack
import psutil
import websockets

from bench import _results
from bench._relay_stack import stack
from podstream import wire

#: Handshakes in flight at once, at most (the relay gives websockets waiting for `auth` a budget of their own,
#: at most half the connections its fd limit leaves room for: `handshakes` keeps well inside that).
CONCURRENT_HANDSHAKES = 100
STEPS = 4


def raise_nofile() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; (soft, hard) in force afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def nofile_of(pid: int) -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE of another process (as /proc/PID/limits says)."""
    limits = psutil.Process(pid).rlimit(psutil.RLIMIT_NOFILE)
    return int(limits[0]), int(limits[1])


class Subscriber:
    """One idle subscriber: authenticated, subscribed, answering pings until told to stop."""

    def __init__(self, url: str, token: str, job: str) -> None:
        self.url, self.token, self.job = url, token, job
        self.ready = asyncio.Event()
        self.error: str | None = None
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        try:
            async with websockets.connect(
                self.url, compression=None, open_timeout=60, ping_interval=None
            ) as ws:
                await ws.send(msgpack.packb({"t": "auth", "token": self.token}))
                async for raw in ws:
                    frame: dict[str, Any] = msgpack.unpackb(raw)  # type: ignore[arg-type]
                    kind = frame["t"]
                    if kind == "welcome":
                        await ws.send(msgpack.packb({"t": "sub", "job": self.job, "from": 0}))
                    elif kind == "ev":
                        self.ready.set()
                    elif kind == "ping":
                        await ws.send(msgpack.packb({"t": "pong", "n": frame["n"]}))
                    elif kind in ("err", "bye"):
                        self.error = f"{frame.get('code')} {frame.get('message') or frame.get('reason')}"
                        break
                else:
                    self.error = self.error or f"closed: {ws.close_code} {ws.close_reason}"
        except asyncio.CancelledError:
            raise
        except (OSError, websockets.WebSocketException, TimeoutError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.ready.set()


def handshakes(relay_soft: int) -> int:
    return max(1, min(CONCURRENT_HANDSHAKES, relay_soft // 16))


async def connect(url: str, token: str, job: str, count: int, into: list[Subscriber], at_once: int) -> None:
    """Add `count` subscribers, `at_once` opening at a time; each is live (or refused) when added."""
    gate = asyncio.Semaphore(at_once)

    async def one() -> None:
        async with gate:
            sub = Subscriber(url, token, job)
            into.append(sub)
            await sub.ready.wait()

    await asyncio.gather(*(one() for _ in range(count)))


def fit_slope(xs: list[int], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


async def run(total: int) -> dict[str, Any]:
    bench_soft, bench_hard = raise_nofile()
    key = secrets.token_urlsafe(24)
    # The relay's own cap (MAX_CONNECTIONS, default 10,000) set above the run, so the fd budget is what can bind.
    env = {
        "PODSTREAM_MAX_CONNECTIONS": str(total + 1000),
        "PODSTREAM_MAX_PENDING_AUTH": str(CONCURRENT_HANDSHAKES * 2),
    }
    async with stack(api_key=key, env=env) as s:
        relay = psutil.Process(s.process.pid)
        relay_soft, relay_hard = nofile_of(relay.pid)
        job = await s.run_job()
        await s.attach(job)
        assert await s.take() == job
        await s.post(job, wire.Envelopes(job).progress(0, 1, 10))  # a record for every subscriber to read
        await s.wait_record(job)
        r = await s.http.post(f"{s.relay_url}/v1/jobs/{job}/tokens", json={"ttl_s": 3600})
        r.raise_for_status()
        token = r.json()["token"]
        subs: list[Subscriber] = []
        rows: list[dict[str, Any]] = [
            {"subscribers": 0, "rss_mib": relay.memory_info().rss / 2**20, "fds": relay.num_fds()}
        ]
        started = time.monotonic()
        step = max(1, total // STEPS)
        try:
            while len(subs) < total:
                await connect(
                    s.ws_url, token, job, min(step, total - len(subs)), subs, handshakes(relay_soft)
                )
                live = sum(1 for sub in subs if sub.error is None)
                await asyncio.sleep(1.0)  # let the relay settle (buffers of the last handshakes freed)
                rows.append(
                    {"subscribers": live, "rss_mib": relay.memory_info().rss / 2**20, "fds": relay.num_fds()}
                )
                print(
                    f"  {live:6d} live subscribers: relay RSS {rows[-1]['rss_mib']:.0f} MiB, {rows[-1]['fds']} fds"
                )
                if live < len(subs):
                    break  # refused: the limit is reached
            connect_s = time.monotonic() - started
            errors = sorted({sub.error for sub in subs if sub.error})
            live = sum(1 for sub in subs if sub.error is None)
            peak = relay.memory_info().rss / 2**20
            hwm = _results.peak_rss_mb(relay.pid)
            own_fds = psutil.Process().num_fds()
        finally:
            for sub in subs:
                sub.task.cancel()
            await asyncio.gather(*(sub.task for sub in subs), return_exceptions=True)
    xs = [row["subscribers"] for row in rows[1:]]
    ys = [row["rss_mib"] for row in rows[1:]]
    per_sub_kib = (
        fit_slope(xs, ys) * 1024 if len(xs) > 1 else (ys[-1] - rows[0]["rss_mib"]) * 1024 / max(xs[-1], 1)
    )
    # The fd limit binds when subscribers were refused and the relay's descriptors are near its soft limit.
    # (the relay keeps FD_RESERVE, an eighth of its limit, from client connections, so "near" is 70 %).
    fd_bound = live < total and max(rows[-1]["fds"] / relay_soft, own_fds / bench_soft) >= 0.7
    return {
        "subscribers_asked": total,
        "subscribers_held": live,
        "idle_rss_mib": rows[0]["rss_mib"],
        "rss_mib": peak,
        "hwm_mib": hwm,
        "per_subscriber_kib": per_sub_kib,
        "rows": rows,
        "relay_nofile": [relay_soft, relay_hard],
        "bench_nofile": [bench_soft, bench_hard],
        "fd_limit_binds": fd_bound,
        "bench_fds": own_fds,
        "errors": errors[:5],
        "connect_s": connect_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscribers", type=int, default=2000)
    _results.add_json_option(parser)
    args = parser.parse_args()
    out = asyncio.run(run(args.subscribers))
    print(
        f"held {out['subscribers_held']} of {out['subscribers_asked']} idle authenticated subscribers "
        f"(connected in {out['connect_s']:.1f} s)"
    )
    print(
        f"relay RSS: {out['idle_rss_mib']:.0f} MiB with none, {out['rss_mib']:.0f} MiB with all "
        f"(peak VmHWM {out['hwm_mib']:.0f} MiB); {out['per_subscriber_kib']:.1f} KiB per extra subscriber"
    )
    soft, hard = out["relay_nofile"]
    print(f"RLIMIT_NOFILE in force: relay soft {soft} / hard {hard}; this process {out['bench_nofile']}")
    if out["fd_limit_binds"]:
        print(
            f"the file-descriptor limit binds: raise `ulimit -n` above {out['subscribers_asked']} + reserve"
        )
    if out["errors"]:
        print(f"refused or failed: {out['errors']}")
    _results.write(args.json, "relay_idle", args, out)
    if out["subscribers_held"] < out["subscribers_asked"] and not out["fd_limit_binds"]:
        raise SystemExit("subscribers were refused below the fd limit")


if __name__ == "__main__":
    main()
