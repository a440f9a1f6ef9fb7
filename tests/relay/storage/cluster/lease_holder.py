"""A replica's claim loop as its own process (tests SIGKILL it): `python -m tests.relay.storage.cluster.lease_holder
REDIS_URL REPLICA TTL_S`. Prints `claimed JOB TOKEN` for each job it takes and `renewed JOB N` after renewals."""

from __future__ import annotations

import asyncio
import sys

import redis

from relay.storage.cluster.claims import JobClaimer, LeaseKeeper
from relay.storage.cluster.job_index import RedisJobIndex
from relay.storage.cluster.lease import RedisLeases


async def main(url: str, replica: str, ttl_s: float) -> None:
    client = redis.Redis.from_url(url)
    leases = RedisLeases(client, replica, ttl_s=ttl_s)
    watchers: set[asyncio.Task[None]] = set()

    async def report(job: str, keeper: LeaseKeeper) -> None:
        print(f"claimed {job} {keeper.lease.token}", flush=True)

        async def renewals() -> None:
            seen = 0
            while not keeper.lost.is_set():
                if keeper.renewals > seen:
                    seen = keeper.renewals
                    print(f"renewed {job} {seen}", flush=True)
                await asyncio.sleep(0.02)

        watchers.add(asyncio.create_task(renewals()))

    await JobClaimer(leases, RedisJobIndex(client), report).run()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
