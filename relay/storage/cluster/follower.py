"""Following many jobs' journals live on one replica with one blocking read: `XREAD BLOCK` over all of them.

A replica that does not poll a job still has subscribers of it. Instead of a reader (or a sleep loop) per
subscriber, or even per job, the replica's `JournalFollower` keeps one `XREAD BLOCK` over the journal
streams of every job it follows, from the last seq it has seen of each, plus the replica's own *wake*
stream: `follow` and `unfollow` XADD to the wake stream, which ends the blocked read at once so the next
one includes the change. When Redis answers with new entries of a job, `on_new(job, seq)` is called with
the newest seq (the hub then wakes that job's subscribers, who read the records through `RedisJournal`).

Memory is one position per followed job; nothing is queued per subscriber. (On Redis Cluster the streams of
one XREAD must share a slot: there, one follower per slot is needed. Not done yet.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

import redis
import redis.asyncio as aioredis

from relay.storage.cluster.keys import Keys

log = logging.getLogger("podstream.relay.cluster")

#: Entries of the wake stream kept (only the newest matters).
WAKE_MAXLEN: Final = 16


def _seq(entry_id: Any) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(text.partition("-")[0])


class JournalFollower:
    def __init__(
        self,
        client: aioredis.Redis,
        replica: str,
        on_new: Callable[[str, int], None],
        *,
        keys: Keys | None = None,
        block_ms: int = 30_000,
    ) -> None:
        self.client = client
        self.keys = keys or Keys()
        self.on_new = on_new
        self.block_ms = block_ms
        self.wake_key = f"{self.keys.prefix}:replica:{replica}:wake"
        self._positions: dict[str, int] = {}
        self._by_key: dict[str, str] = {}
        self._wake_id = "$"
        #: Blocking reads answered so far (tests, metrics).
        self.reads = 0
        self._stopping = False

    def __contains__(self, job: str) -> bool:
        return job in self._positions

    async def follow(self, job: str, after: int) -> None:
        """Call `on_new` for entries of `job` past seq `after` from now on."""
        self._positions[job] = max(after, self._positions.get(job, 0))
        self._by_key[self.keys.journal(job)] = job
        await self._wake()

    async def unfollow(self, job: str) -> None:
        if self._positions.pop(job, None) is not None:
            self._by_key.pop(self.keys.journal(job), None)
            await self._wake()

    async def stop(self) -> None:
        """End `run` after the read in flight, which this wakes. (Cancelling a task blocked in XREAD is
        not enough: redis-py may wait for the command's answer, i.e. for `block_ms`.)"""
        self._stopping = True
        await self._wake()

    async def _wake(self) -> None:
        await self.client.xadd(self.wake_key, {"w": b"1"}, maxlen=WAKE_MAXLEN, approximate=False)

    async def run(self) -> None:
        if self._wake_id == "$":  # from the wake stream's present: older wake-ups are not for this read
            newest: Any = await self.client.xrevrange(self.wake_key, count=1)
            self._wake_id = newest[0][0].decode() if newest else "0-0"
        while not self._stopping:
            streams: dict[Any, Any] = {self.wake_key: self._wake_id}
            streams.update({self.keys.journal(job): f"{seq}-0" for job, seq in self._positions.items()})
            try:
                answer: Any = await self.client.xread(streams, count=256, block=self.block_ms)
            except redis.RedisError as exc:
                log.warning("following journals failed (%s); retrying", exc)
                await asyncio.sleep(1.0)  # Redis is down: a reconnect attempt per second, not a tight loop
                continue
            self.reads += 1
            for key, entries in answer or []:
                name = key.decode() if isinstance(key, bytes) else str(key)
                if not entries:
                    continue
                if name == self.wake_key:
                    last = entries[-1][0]
                    self._wake_id = last.decode() if isinstance(last, bytes) else str(last)
                    continue
                job = self._by_key.get(name)
                if job is None or job not in self._positions:
                    continue  # unfollowed while this read was answered
                seq = _seq(entries[-1][0])
                if seq > self._positions[job]:
                    self._positions[job] = seq
                    self.on_new(job, seq)
