"""Who polls which job across replicas: keeping a lease alive, and taking over jobs nobody holds.

`LeaseKeeper` renews one lease every third of its TTL. A renewal that finds the lease gone or someone
else's (this replica stalled past the TTL and was replaced) ends it at once: `lost` is set and `on_lost`
is called, so the job's poller stops; its late writes would be refused by the fence anyway. While Redis
cannot be reached the keeper retries, and gives the lease up as lost once a TTL has passed since its last
successful renewal (by then another replica may hold it).

`JobClaimer` is each replica's loop over the unfinished jobs of the index: every half TTL (jittered), unless
`may_claim` says the replica cannot take jobs now (its spool fails), it tries to acquire the lease of each
job that has no holder and hands each win to `on_claim(job, lease)`, which starts the poller with the
lease's fencing token (rebuilding the job's state from Redis, as a restart does from disk). A holder that dies stops renewing; its lease runs out within one TTL and the next
scan of any live replica takes the job: takeover within 1.5x the TTL, plus the jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

import redis

from relay.storage.cluster.job_index import RedisJobIndex
from relay.storage.cluster.lease import RedisLeases
from relay.storage.protocols import Lease

log = logging.getLogger("podstream.relay.cluster")


class LeaseKeeper:
    def __init__(
        self, leases: RedisLeases, lease: Lease, *, on_lost: Callable[[str], None] | None = None
    ) -> None:
        self.leases = leases
        self.lease = lease
        self.on_lost = on_lost
        self.lost = asyncio.Event()
        #: Successful renewals so far (tests, metrics).
        self.renewals = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def ttl_s(self) -> float:
        return self.leases.ttl_ms / 1000

    def start(self) -> LeaseKeeper:
        self._task = asyncio.create_task(self.run(), name=f"lease {self.lease.name}")
        return self

    async def run(self) -> None:
        renewed_at = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                held = await asyncio.to_thread(self.leases.renew, self.lease)
            except redis.RedisError as exc:
                if time.monotonic() - renewed_at < self.ttl_s:
                    log.warning("renewing the lease of %s failed (%s); retrying", self.lease.name, exc)
                    continue
                self._lose(f"Redis unreachable for a whole lease TTL ({exc})")
                return
            if not held:
                self._lose("the lease expired and was taken over")
                return
            renewed_at = time.monotonic()
            self.renewals += 1

    def _lose(self, why: str) -> None:
        log.warning("lost the lease of %s (token %d): %s", self.lease.name, self.lease.token, why)
        self.lost.set()
        if self.on_lost is not None:
            self.on_lost(why)

    async def stop(self, *, release: bool = True) -> None:
        """Stop renewing; `release` gives the lease up at once (a clean shutdown: no TTL to wait out)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if release and not self.lost.is_set():
            try:
                await asyncio.to_thread(self.leases.release, self.lease)
            except redis.RedisError:
                log.warning("could not release the lease of %s; it runs out by itself", self.lease.name)


class JobClaimer:
    """Each replica's loop: claim every unfinished job nobody holds, keep the leases it won."""

    def __init__(
        self,
        leases: RedisLeases,
        index: RedisJobIndex,
        on_claim: Callable[[str, LeaseKeeper], Awaitable[None]],
        *,
        rng: Callable[[], float] = random.random,
        may_claim: Callable[[], bool] = lambda: True,
    ) -> None:
        self.leases = leases
        self.index = index
        self.on_claim = on_claim
        self.rng = rng
        #: Whether this replica may take jobs now (False: it could not store them, its spool is failing).
        self.may_claim = may_claim
        #: The leases this replica holds, by job.
        self.held: dict[str, LeaseKeeper] = {}

    @property
    def interval_s(self) -> float:
        return self.leases.ttl_ms / 1000 / 2

    async def claim_once(self) -> list[str]:
        """One scan: the jobs newly claimed by this replica."""
        claimed: list[str] = []
        if not self.may_claim():
            return claimed
        for job in await asyncio.to_thread(self.index.active):
            if not self.may_claim():
                break
            keeper = self.held.get(job)
            if keeper is not None and not keeper.lost.is_set():
                continue
            lease = await asyncio.to_thread(self.leases.acquire, job)
            if lease is None:
                continue
            keeper = self.held[job] = LeaseKeeper(self.leases, lease).start()
            claimed.append(job)
            log.info("claimed job %s (token %d)", job, lease.token)
            await self.on_claim(job, keeper)
        return claimed

    async def run(self) -> None:
        while True:
            try:
                await self.claim_once()
            except redis.RedisError as exc:
                log.warning("cannot scan for jobs to take over (%s); retrying", exc)
            except Exception:  # the loop must go on (a job that cannot be opened here, ...)
                log.exception("scanning for jobs to take over failed; retrying")
            await asyncio.sleep(self.interval_s * (0.75 + 0.5 * self.rng()))

    async def stop(self) -> None:
        keepers = list(self.held.values())
        self.held.clear()
        await asyncio.gather(*(k.stop() for k in keepers))
