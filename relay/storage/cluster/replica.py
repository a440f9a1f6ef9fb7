"""One relay replica in cluster mode: which jobs it polls, how it follows the others, whether it is ready.

`Relay` (relay/service.py) asks this object instead of starting pollers itself:
- `poll(store)` (after a submit or attach) tries to take the job's lease at once, so the replica that
  submitted a job usually polls it; `JobClaimer` (every TTL/2) takes the jobs nobody holds, which is how
  the jobs of a dead replica are taken over. Winning a lease: the job's store takes in what was committed,
  turns writable with the lease's fencing token, stops being followed, and its poller starts (rebuilding
  the Assembler from the ingest log in Redis, as a restart does from disk). Its `done` record releases the
  lease; a lease lost (`LeaseKeeper.on_lost`) stops the poller and makes the store read-only again.
- `opened(store)`: a job opened here that another replica polls is followed live: `JournalFollower` wakes
  on its new journal entries, the store takes them in (`fetch_new` in a thread, `take_in` on the loop) and
  the hub wakes the job's subscribers. No sleep loops, no per-subscriber queues.
- `problem`: why the replica is not ready, for `/readyz` (a load balancer then sends new clients elsewhere):
  Redis, the bucket or the local spool failing or not answering within a deadline (`relay.storage.cluster.health`).
- A replica that cannot write its spool (a full disk) cannot store what it polls: it stops claiming jobs,
  stops its pollers and gives every job lease back at once, so the other replicas take the jobs over, and
  stays not ready until the spool takes files again (and for at least `SPOOL_HOLD_TTLS` lease TTLs).
- `sweep_lease()`: the retention sweep runs on one replica at a time (a lease named `~sweeper`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Final

import redis
import redis.asyncio as aioredis

from relay.storage.cluster.claims import JobClaimer, LeaseKeeper
from relay.storage.cluster.cluster import Cluster
from relay.storage.cluster.follower import JournalFollower
from relay.storage.cluster.health import DEADLINE_S, INTERVAL_S, Probe, Readiness, spool_check, spool_problem
from relay.storage.cluster.job_store import ClusterJobStore
from relay.storage.cluster.settings import ClusterSettings
from relay.storage.job import JobStore
from relay.storage.protocols import Lease

log = logging.getLogger("podstream.relay.cluster")

#: The lease of the retention sweep (job ids cannot start with "~": no job shares it).
SWEEPER: Final = "~sweeper"
#: How often Redis, the bucket and the spool are probed for `/readyz`.
HEALTH_INTERVAL_S: Final = INTERVAL_S
#: After a spool write failed, the replica stays not ready (and claims nothing) for at least this many lease
#: TTLs, so the jobs it gave back settle on other replicas instead of bouncing back.
SPOOL_HOLD_TTLS: Final = 3.0
#: The name of the spool's probe (`Readiness`).
SPOOL: Final = "spool"


class Replica:
    def __init__(
        self,
        cluster: Cluster,
        settings: ClusterSettings,
        *,
        open_job: Callable[[str], JobStore | None],
        start_poller: Callable[[ClusterJobStore], None],
        stop_poller: Callable[[str], asyncio.Future[None] | None],
        publish: Callable[[str], None],
        spool: Path,
    ) -> None:
        self.cluster = cluster
        self.settings = settings
        self.open_job = open_job
        self.start_poller = start_poller
        #: Stops the job's poller; returns its task (done once its last write is over), if it had one.
        self.stop_poller = stop_poller
        self.publish = publish
        self.spool = spool
        self.claimer = JobClaimer(cluster.leases, cluster.index, self._claimed, may_claim=self._spool_ok)
        self.readiness = Readiness(
            [*cluster.probes(settings, DEADLINE_S), Probe(SPOOL, spool_check(spool))],
            interval_s=HEALTH_INTERVAL_S, deadline_s=DEADLINE_S,
        )  # fmt: skip
        self.aredis: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=5, socket_timeout=None
        )
        self.follower = JournalFollower(
            self.aredis, cluster.replica, self._woken, keys=cluster.keys, block_ms=10_000
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._giving_up: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._sweeper: Lease | None = None
        self._pending: set[asyncio.Future[None]] = set()

    @property
    def name(self) -> str:
        return self.cluster.replica

    @property
    def problem(self) -> str | None:
        """Why this replica is not ready now (None: Redis, the bucket and the spool answered in time)."""
        return self.readiness.problem

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self.follower.run(), name="cluster follower"),
            asyncio.create_task(self._health_forever(), name="cluster health"),
            asyncio.create_task(self.claimer.run(), name="cluster claimer"),
        ]

    async def stop(self) -> None:
        """Stop claiming and following; give every lease back at once (a clean shutdown: the other
        replicas take the jobs over at their next scan, without waiting for a TTL)."""
        with contextlib.suppress(redis.RedisError):
            await self.follower.stop()
        for task in self._tasks:
            task.cancel()
        giving_up = [self._giving_up] if self._giving_up is not None else []
        await asyncio.gather(
            *self._tasks, *self._refreshing.values(), *self._pending, *giving_up, return_exceptions=True
        )
        await self.claimer.stop()
        self.readiness.close()
        if self._sweeper is not None:
            with contextlib.suppress(redis.RedisError):
                await asyncio.to_thread(self.cluster.leases.release, self._sweeper)
        await self.aredis.aclose()
        self.cluster.close()

    # ------------------------------------------------------------------ polling

    async def poll(self, store: JobStore) -> bool:
        """Take the job's lease now if nobody holds it (True: this replica polls it)."""
        job = store.job
        keeper = self.claimer.held.get(job)
        if keeper is not None and not keeper.lost.is_set():
            return True
        if not self._spool_ok():  # it could not store what it polls: another replica claims the job
            self.opened(store)
            return False
        lease = await asyncio.to_thread(self.cluster.leases.acquire, job)
        if lease is None:
            self.opened(store)
            return False
        keeper = self.claimer.held[job] = LeaseKeeper(self.cluster.leases, lease).start()
        await self._claimed(job, keeper)
        return True

    async def _claimed(self, job: str, keeper: LeaseKeeper) -> None:
        store = self.open_job(job)
        if not isinstance(store, ClusterJobStore) or store.finished:
            await self._give_back(job)
            return
        keeper.on_lost = lambda why: self._lost(job)
        await self.follower.unfollow(job)
        store.take_in(await asyncio.to_thread(store.fetch_new))
        if store.finished:  # it ended while the lease was free
            await self._give_back(job)
            return
        store.acquire(keeper.lease.token)
        log.info("replica %s polls job %s (token %d)", self.name, job, keeper.lease.token)
        self.start_poller(store)

    def _lost(self, job: str) -> None:
        self.stop_poller(job)
        store = self.open_job(job)
        if isinstance(store, ClusterJobStore):
            store.release()
            self.opened(store)

    def ended(self, job: str) -> None:
        """The job's `done` record is committed (called on the event loop): release its lease."""
        if job in self.claimer.held:
            self._background(self._give_back(job))

    async def _give_back(self, job: str) -> None:
        keeper = self.claimer.held.pop(job, None)
        if keeper is not None:
            await keeper.stop(release=True)
        store = self.open_job(job)
        if isinstance(store, ClusterJobStore) and store.writable and store.finished:
            store.release()

    def polls(self, job: str) -> bool:
        keeper = self.claimer.held.get(job)
        return keeper is not None and not keeper.lost.is_set()

    # ------------------------------------------------------------------ following

    def opened(self, store: JobStore) -> None:
        """A job opened on this replica: follow it live unless it is finished or polled here."""
        if store.finished or self.polls(store.job) or store.job in self.follower:
            return
        self._background(self._follow(store))

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._pending.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(self._pending.discard)
        task.add_done_callback(_log_failure)

    async def _follow(self, store: JobStore) -> None:
        try:
            await self.follower.follow(store.job, store.journal.published)
        except redis.RedisError as exc:
            log.warning("cannot follow job %s (%s); subscribers wait for Redis", store.job, exc)

    def _woken(self, job: str, seq: int) -> None:
        if job in self._refreshing:
            self._again.add(job)  # taken in by the fetch in flight, or the one after it
            return
        self._refreshing[job] = refresh = asyncio.ensure_future(self._refresh(job))
        refresh.add_done_callback(_log_failure)

    async def _refresh(self, job: str) -> None:
        try:
            while True:
                self._again.discard(job)
                store = self.open_job(job)
                if not isinstance(store, ClusterJobStore) or store.writable:
                    return
                try:
                    records = await asyncio.to_thread(store.fetch_new)
                except redis.RedisError as exc:
                    log.warning("reading job %s from Redis failed (%s)", job, exc)
                    return  # the follower wakes this again once Redis answers
                if store.take_in(records):
                    self.publish(job)
                if store.finished:
                    await self.follower.unfollow(job)
                    return
                if job not in self._again:
                    return
        finally:
            self._refreshing.pop(job, None)

    # ------------------------------------------------------------------ readiness and the sweeper

    async def _health_forever(self) -> None:
        ready = True
        while True:
            self.readiness.tick()
            await asyncio.sleep(HEALTH_INTERVAL_S)
            problem = self.readiness.problem
            if problem is not None and ready:
                log.warning("replica %s not ready: %s", self.name, problem)
            elif problem is None and not ready:
                log.info("replica %s ready again: Redis, the bucket and the spool answer", self.name)
            ready = problem is None
            if not self._spool_ok() and self.claimer.held:
                self._give_up(problem or "the spool cannot be written")

    # ------------------------------------------------------------------ the spool

    def _spool_ok(self) -> bool:
        return not self.readiness.failing(SPOOL)

    def spool_failed(self, exc: OSError) -> None:
        """An item's bytes could not be spooled (called from a poller's thread): not ready, and every lease
        given back, so the jobs go to a replica that can store them."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        problem = spool_problem(self.spool, exc)
        hold_s = SPOOL_HOLD_TTLS * self.settings.lease_ttl_s

        def on_loop() -> None:
            self.readiness.hold(SPOOL, problem, hold_s)
            self._give_up(problem)

        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile (shutting down)
            loop.call_soon_threadsafe(on_loop)

    def _give_up(self, why: str) -> None:
        if self._giving_up is None or self._giving_up.done():
            self._giving_up = asyncio.ensure_future(self._give_up_leases(why))
            self._giving_up.add_done_callback(_log_failure)

    async def _give_up_leases(self, why: str) -> None:
        """Stop every poller of this replica and give its leases back (the others take the jobs at their next
        scan); the jobs stay followed here for their subscribers. All jobs at once: a poller may take a while
        to stop (its thread work finishes first)."""
        jobs = list(self.claimer.held)
        await asyncio.gather(*(self._give_up_lease(job) for job in jobs))
        if jobs:
            log.warning("replica %s gave the leases of %d job(s) back: %s", self.name, len(jobs), why)

    async def _give_up_lease(self, job: str) -> None:
        keeper = self.claimer.held.pop(job, None)
        if keeper is None:
            return
        polling = self.stop_poller(job)
        if polling is not None:
            await asyncio.wait([polling])  # its last write is over before the lease goes
        store = self.open_job(job)
        if isinstance(store, ClusterJobStore) and store.writable:
            store.release()
        await keeper.stop(release=True)
        if store is not None:
            self.opened(store)

    def sweep_lease(self) -> bool:
        """Whether this replica runs the retention sweep now (blocking: in a thread)."""
        leases = self.cluster.leases
        try:
            if self._sweeper is not None and leases.renew(self._sweeper):
                return True
            self._sweeper = leases.acquire(SWEEPER)
        except redis.RedisError:
            self._sweeper = None
        return self._sweeper is not None


def _log_failure(task: asyncio.Future[None]) -> None:
    """A background task's exception is logged here, never left unretrieved."""
    if not task.cancelled() and task.exception() is not None:
        log.error("replica background task failed", exc_info=task.exception())
