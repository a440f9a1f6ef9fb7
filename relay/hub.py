"""Fan-out: per-job wake-ups, and subscribers as cursors over the journal.

There are no per-subscriber queues. A subscriber is a position (`seq`) in a job's journal; `Hub.records`
reads forward from it (the journal's in-memory tail, or disk for older records) and, when it has caught up,
sleeps until the job's poller publishes more. Replay of a finished job, a live job and a late join are this
one loop. A slow subscriber only falls behind in the journal; it costs no memory and never blocks the poller.

`ChunkCache` shares the encoded `chunk` frames of an item's bytes between the subscribers reading the same
bytes at about the same time (bounded, least recently used out; concurrent misses share one load), so N
subscribers cost one disk read and one encoding per chunk, not N. In cluster mode the bytes come from the
bucket (a `MediaSource`: one ranged GET per chunk per replica, not per subscriber).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import msgpack

from relay.storage.job import JobStore
from relay.storage.protocols import MediaSource


class JobSignal:
    """Wakes every waiter of one job at once (a fresh `asyncio.Event` per publication)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    @property
    def changed(self) -> asyncio.Event:
        """The event the next `publish` sets. Take it *before* reading, then wait on it: no lost wake-up."""
        return self._event

    def publish(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()


class Hub:
    def __init__(self) -> None:
        self._signals: dict[str, JobSignal] = {}

    def signal(self, job: str) -> JobSignal:
        signal = self._signals.get(job)
        if signal is None:
            signal = self._signals[job] = JobSignal()
        return signal

    def publish(self, job: str) -> None:
        signal = self._signals.get(job)
        if signal is not None:
            signal.publish()

    def forget(self, job: str) -> None:
        signal = self._signals.pop(job, None)
        if signal is not None:
            signal.publish()

    async def records(
        self, store: JobStore, after: int, *, batch: int = 256, idle: Callable[[], None] | None = None
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Every record with seq > `after`, in order, live, ending after the `done` record.

        `idle` is called each time the cursor has caught up and is about to wait.
        """
        seq = after
        signal = self.signal(store.job)
        with store.reading():  # a sweep leaves the job's files open until this cursor is done
            while True:
                changed = signal.changed
                if store.closed:
                    return
                records = store.journal.read(seq, batch)
                for record in records:
                    yield record
                    seq = record["seq"]
                if records:
                    continue
                if store.done is not None and seq >= store.done["seq"]:
                    return
                if store.retired:
                    return
                if idle is not None:
                    idle()
                await changed.wait()

    async def wait_beyond(self, store: JobStore, after: int, seconds: float) -> None:
        """Return when a record with seq > `after` is published, the job is done, or after `seconds`."""
        signal = self.signal(store.job)
        changed = signal.changed
        if store.journal.published > after or store.done is not None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), seconds)


class ChunkCache:
    """Encoded `chunk` frames keyed by (file, offset), bounded in bytes, least recently used out.

    Single-flight: the first subscriber to miss a chunk starts one load (pread + msgpack, in a thread) and
    every subscriber asking for the same chunk while it runs awaits that same load, so N subscribers in
    lockstep cost one read and one encoding. The load is its own task, so a subscriber that disconnects
    mid-wait does not cancel it for the others.

    `hits` counts frames served without a load of their own (from the cache, or by joining a load in
    flight: `joined` of them); `misses` counts loads.
    """

    def __init__(self, max_bytes: int, chunk_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.chunk_bytes = chunk_bytes
        self._frames: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._loading: dict[tuple[str, int], asyncio.Task[bytes]] = {}
        self.bytes = 0
        self.hits = 0
        self.joined = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def hit_rate(self) -> float:
        served = self.hits + self.misses
        return self.hits / served if served else 0.0

    async def frame(self, path: Path | MediaSource, head: dict[str, Any], offset: int, size: int) -> bytes:
        """The `chunk` frame of the bytes of `path` at `offset` (`head` holds its job/seq/item fields)."""
        key = (str(path), offset)
        frame = self._frames.get(key)
        if frame is not None:
            self._frames.move_to_end(key)
            self.hits += 1
            return frame
        load = self._loading.get(key)
        if load is not None:
            self.hits += 1
            self.joined += 1
        else:
            self.misses += 1
            load = asyncio.ensure_future(self._load(key, path, head, offset, size))
            self._loading[key] = load
            load.add_done_callback(_retrieve)
        # shield: cancelling this subscriber must not cancel the load the others are waiting for
        return await asyncio.shield(load)

    async def _load(
        self, key: tuple[str, int], path: Path | MediaSource, head: dict[str, Any], offset: int, size: int
    ) -> bytes:
        try:
            length = min(self.chunk_bytes, size - offset)
            frame = await asyncio.to_thread(_encode, path, head, offset, length, size)
            self._insert(key, frame)
            return frame
        finally:
            del self._loading[key]

    def _insert(self, key: tuple[str, int], frame: bytes) -> None:
        if self.max_bytes < len(frame):
            return
        old = self._frames.pop(key, None)
        if old is not None:  # replaced, not added: its bytes are counted once
            self.bytes -= len(old)
        self._frames[key] = frame
        self.bytes += len(frame)
        while self.bytes > self.max_bytes:
            _key, evicted = self._frames.popitem(last=False)
            self.bytes -= len(evicted)

    def offsets(self, size: int) -> range:
        """Offsets of an item's chunks (one, at 0, for an empty item)."""
        return range(0, max(size, 1), self.chunk_bytes)


def _retrieve(task: asyncio.Task[bytes]) -> None:
    """A load whose every waiter went away still ends; its error is theirs, not the loop's to log."""
    if not task.cancelled():
        task.exception()


def _encode(path: Path | MediaSource, head: dict[str, Any], offset: int, length: int, size: int) -> bytes:
    if isinstance(path, Path):
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        if len(data) != length:
            raise FileNotFoundError(f"{path.name} is shorter than its record says")
    else:
        data = path.read(offset, length)
    frame: bytes = msgpack.packb(
        {"t": "chunk", **head, "off": offset, "data": data, "last": offset + length >= size},
        use_bin_type=True,
    )
    return frame
