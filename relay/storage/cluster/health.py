"""Whether a replica can take traffic: probes of what it depends on, each with a deadline.

A replica needs Redis, the bucket and its local spool. `Readiness` probes each every `interval_s`, in threads
of its own (one per probe, never the event loop's default executor, which pollers blocked on the same
dependency may fill), at most one probe of each in flight. `problem` is worked out when asked (`/readyz`),
so a dependency that hangs (a SIGSTOPped Redis, a bucket that accepts connections and never answers) is
reported within its deadline instead of after the clients' own timeouts and retries:

- a probe in flight for longer than `deadline_s`: "<what> did not answer within <deadline> s";
- the last probe of it failed: what it said;
- a failure reported by the work itself (`hold`: the spool refused an item's bytes) counts until its hold
  time has passed *and* a probe since has succeeded;
- probes that have not run for a while (the prober stopped): "not checked for <n> s".

The probes' own clients have timeouts of about the deadline and no retries (`cluster.probes`), so a hung
probe's thread ends by itself and the next probe sees a dependency that came back at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Final

log = logging.getLogger("podstream.relay.cluster")

#: How often each dependency is probed.
INTERVAL_S: Final = 2.0
#: A probe that has not answered after this long makes the replica not ready.
DEADLINE_S: Final = 3.0
#: What the spool probe reserves on disk (`posix_fallocate`: no data written): about two parts of an item.
SPOOL_PROBE_BYTES: Final = 1024 * 1024


class Unusable(Exception):
    """What a probe raises: one line saying which dependency cannot be used and why."""


class Probe:
    """One dependency: `check` (blocking) raises an exception that says what is wrong; `close` frees its
    clients."""

    def __init__(
        self, name: str, check: Callable[[], None], *, close: Callable[[], None] | None = None
    ) -> None:
        self.name = name
        self.check = check
        self.close = close
        self.running: Future[None] | None = None
        self.started = 0.0
        self.error: str | None = None
        self.checked_at: float | None = None
        #: A failure reported by the work itself (`Readiness.hold`), and until when it counts at least.
        self.held: str | None = None
        self.held_until = 0.0


class Readiness:
    def __init__(
        self,
        probes: Sequence[Probe],
        *,
        interval_s: float = INTERVAL_S,
        deadline_s: float = DEADLINE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probes = {probe.name: probe for probe in probes}
        self.interval_s = interval_s
        self.deadline_s = deadline_s
        self.clock = clock
        self._ticked = clock()
        self._executor = ThreadPoolExecutor(max(1, len(self.probes)), thread_name_prefix="readiness")

    # ------------------------------------------------------------------ probing

    def tick(self) -> None:
        """Start a probe of every dependency that has none in flight (on the event loop)."""
        loop = asyncio.get_running_loop()
        self._ticked = self.clock()
        for probe in self.probes.values():
            if probe.running is None:
                probe.started = self.clock()
                probe.running = future = self._executor.submit(probe.check)
                future.add_done_callback(functools.partial(self._done, loop, probe))

    def _done(self, loop: asyncio.AbstractEventLoop, probe: Probe, future: Future[None]) -> None:
        with contextlib.suppress(RuntimeError):  # (in the probe's thread) the loop closed meanwhile
            loop.call_soon_threadsafe(self._finished, probe, future)

    def _finished(self, probe: Probe, future: Future[None]) -> None:
        if probe.running is not future:
            return
        probe.running = None
        probe.checked_at = self.clock()
        exc = None if future.cancelled() else future.exception()
        probe.error = None if exc is None else (str(exc) or type(exc).__name__)
        if exc is None and probe.held is not None and probe.checked_at >= probe.held_until:
            probe.held = None

    def hold(self, name: str, problem: str, hold_s: float) -> None:
        """The work found `name` unusable (e.g. the spool refused an item's bytes): not ready for at least
        `hold_s`, and after that until a probe of it succeeds."""
        probe = self.probes[name]
        probe.held = problem
        probe.held_until = self.clock() + hold_s

    def failing(self, name: str) -> bool:
        return self._problem(self.probes[name], self.clock()) is not None

    @property
    def problem(self) -> str | None:
        """Why the replica is not ready now (None: every dependency answered in time)."""
        now = self.clock()
        problems = [p for p in (self._problem(probe, now) for probe in self.probes.values()) if p is not None]
        stale = now - self._ticked
        if stale > self.interval_s + 2 * self.deadline_s:
            problems.append(f"readiness not checked for {stale:.0f} s")
        return "; ".join(problems) or None

    def _problem(self, probe: Probe, now: float) -> str | None:
        if probe.held is not None:
            return probe.held
        if probe.running is not None and now - probe.started > self.deadline_s:
            return f"{probe.name} did not answer within {self.deadline_s:g} s"
        return probe.error

    def close(self) -> None:
        """Stop the probe threads (a probe in flight ends by its client's timeout) and close the clients."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        for probe in self.probes.values():
            if probe.close is not None:
                try:
                    probe.close()
                except Exception:  # closing is best effort: the process may be going away
                    log.debug("closing the probe of %s failed", probe.name, exc_info=True)


def spool_check(directory: Path, nbytes: int = SPOOL_PROBE_BYTES) -> Callable[[], None]:
    """A probe that the spool directory takes a new file of `nbytes` (allocated, not written, then deleted):
    fails on a full disk (ENOSPC), a read-only or missing directory, a file size limit."""

    def check() -> None:
        try:
            fd, name = tempfile.mkstemp(prefix=".probe-", dir=directory)
        except OSError as exc:
            raise Unusable(spool_problem(directory, exc)) from None
        try:
            os.posix_fallocate(fd, 0, nbytes)
        except OSError as exc:
            raise Unusable(spool_problem(directory, exc)) from None
        finally:
            os.close(fd)
            os.unlink(name)

    return check


def spool_problem(directory: Path, exc: OSError) -> str:
    return f"cannot write the spool {directory}: {exc.strerror or exc}"
