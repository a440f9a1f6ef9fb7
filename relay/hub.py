"""Fan-out: per-job wake-ups, and subscribers as cursors over the journal.

There are no per-subscriber queues. A subscriber is a position (`seq`) in a job's journal; `Hub.records`
reads forward from it (the journal's in-memory tail, or disk for older records) and, when it has caught up,
sleeps until the job's poller publishes more. Replay of a finished job, a live job and a late join are this
one loop. A slow subscriber only falls behind in the journal; it costs no memory and never blocks the poller.

`ChunkCache` shares the encoded `chunk` frames of an item's bytes between the subscribers reading the same
bytes at about the same time (bounded, least recently used out; concurrent misses share one load), so N
subscribers cost one disk read and one encoding per chunk, not N. In cluster mode the bytes come from the
bucket (a `MediaSource`: one ranged GET per chunk per replica, not per subscriber).

`VerifiedMedia` checks an item's media once per job and process (`JobStore.check_media`, in a thread) and
hands the answer to every later subscriber without a thread hop: a thread hand-off per item per
subscriber cost more than sending the item's bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import msgpack

from podstream import frames
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


class VerifiedMedia:
    """The media of `item` records this process has checked (`JobStore.check_media`), per job store.

    The first subscriber to reach an item checks it in a thread (a stat, and a sha256 of a file this process
    did not store); subscribers arriving meanwhile await that same check; later ones get the cached answer
    at once. A failed check (`MediaGone`, `MediaRetry`, ...) is not kept: the next subscriber checks again.
    A file removed after its check is noticed when its bytes are read (`ChunkCache` raises OSError). Entries
    go with their store (weak keys)."""

    def __init__(self) -> None:
        self._known: weakref.WeakKeyDictionary[JobStore, dict[str, Path | MediaSource]] = (
            weakref.WeakKeyDictionary()
        )
        self._checking: dict[tuple[int, str], asyncio.Future[Path | MediaSource | None]] = {}

    async def check(self, store: JobStore, record: dict[str, Any]) -> Path | MediaSource | None:
        """`store.check_media(record)`, run once per item per process."""
        name = record.get("_file")
        if not isinstance(name, str) or not name:  # a ref: nothing to verify here
            return await asyncio.to_thread(store.check_media, record)
        known = self._known.get(store)
        if known is not None:
            media = known.get(name)
            if media is not None:
                return media
        key = (id(store), name)
        check = self._checking.get(key)
        if check is None:
            check = asyncio.ensure_future(self._check(store, record, key))
            self._checking[key] = check
            check.add_done_callback(_retrieve)
        # shield: a subscriber that goes away must not cancel the check the others await
        return await asyncio.shield(check)

    async def _check(
        self, store: JobStore, record: dict[str, Any], key: tuple[int, str]
    ) -> Path | MediaSource | None:
        try:
            media = await asyncio.to_thread(store.check_media, record)
            if media is not None:
                self._known.setdefault(store, {})[key[1]] = media
            return media
        finally:
            del self._checking[key]


class Hub:
    def __init__(self) -> None:
        self._signals: dict[str, JobSignal] = {}
        self.media = VerifiedMedia()

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

    Read-ahead: a load also reads the item's next chunks (`readahead` in all, when the cache is at least
    16 times that size), so the thread hand-off, which costs more than reading a chunk from the page
    cache, is paid once per `readahead` chunks. A chunk read ahead counts as a miss when it is first
    served, so the counts say the same as without read-ahead.

    `hits` counts frames served without a load of their own (from the cache, or by joining a load in
    flight: `joined` of them); `misses` counts loads.
    """

    def __init__(self, max_bytes: int, chunk_bytes: int, readahead: int = 8) -> None:
        self.max_bytes = max_bytes
        self.chunk_bytes = chunk_bytes
        # A small cache would evict what it read ahead before it is asked for: read one chunk at a time.
        self.readahead = readahead if max_bytes >= 16 * readahead * chunk_bytes else 1
        self._frames: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._loading: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        #: Frames read ahead and not served yet: their first serving is the miss.
        self._ahead: set[tuple[str, int]] = set()
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

    def _served(self, key: tuple[str, int]) -> None:
        if key in self._ahead:
            self._ahead.discard(key)
            self.misses += 1
        else:
            self.hits += 1

    def cached(self, path: Path | MediaSource, offset: int) -> bytes | None:
        """The frame of `path` at `offset` when it is held, else None: no coroutine, no await, for the
        frames K subscribers share."""
        key = (str(path), offset)
        frame = self._frames.get(key)
        if frame is not None:
            self._frames.move_to_end(key)
            self._served(key)
        return frame

    async def frame(self, path: Path | MediaSource, head: dict[str, Any], offset: int, size: int) -> bytes:
        """The `chunk` frame of the bytes of `path` at `offset` (`head` holds its job/seq/item fields)."""
        key = (str(path), offset)
        frame = self._frames.get(key)
        if frame is not None:
            self._frames.move_to_end(key)
            self._served(key)
            return frame
        load = self._loading.get(key)
        if load is not None:
            if key in self._ahead:
                self._served(key)
            else:
                self.hits += 1
                self.joined += 1
        else:
            self.misses += 1
            load = self._start(path, head, offset, size)
        # shield: cancelling this subscriber must not cancel the load the others are waiting for
        return await asyncio.shield(load)

    def _start(
        self, path: Path | MediaSource, head: dict[str, Any], offset: int, size: int
    ) -> asyncio.Future[bytes]:
        """One load (one thread hand-off) of the chunk at `offset` and the next ones not held or loading."""
        name = str(path)
        offsets = [offset]
        for ahead in range(offset + self.chunk_bytes, size, self.chunk_bytes):
            if len(offsets) == self.readahead:
                break
            key = (name, ahead)
            if key in self._frames or key in self._loading:
                break
            offsets.append(ahead)
        loop = asyncio.get_running_loop()
        futures = []
        for at in offsets:
            future: asyncio.Future[bytes] = loop.create_future()
            future.add_done_callback(_retrieve)
            self._loading[(name, at)] = future
            futures.append(future)
        self._ahead.update((name, at) for at in offsets[1:])
        task = asyncio.ensure_future(self._load(name, path, head, offsets, size, futures))
        task.add_done_callback(_retrieve)
        return futures[0]

    async def _load(
        self,
        name: str,
        path: Path | MediaSource,
        head: dict[str, Any],
        offsets: list[int],
        size: int,
        futures: list[asyncio.Future[bytes]],
    ) -> None:
        spans = [(at, min(self.chunk_bytes, size - at)) for at in offsets]
        try:
            results = await asyncio.to_thread(_encode_all, path, head, spans, size)
        except BaseException as exc:  # cancelled with the loop: every waiter hears it
            results = [exc] * len(offsets)
        for at, future, result in zip(offsets, futures, results, strict=True):
            key = (name, at)
            del self._loading[key]
            if isinstance(result, bytes):
                self._insert(key, result)
                future.set_result(result)
            else:
                self._ahead.discard(key)  # not held: its next ask loads it, and counts that
                if isinstance(result, asyncio.CancelledError):
                    future.cancel()
                else:
                    future.set_exception(result)

    def _insert(self, key: tuple[str, int], frame: bytes) -> None:
        if self.max_bytes < len(frame):
            self._ahead.discard(key)
            return
        old = self._frames.pop(key, None)
        if old is not None:  # replaced, not added: its bytes are counted once
            self.bytes -= len(old)
        self._frames[key] = frame
        self.bytes += len(frame)
        while self.bytes > self.max_bytes:
            evicted_key, evicted = self._frames.popitem(last=False)
            self._ahead.discard(evicted_key)
            self.bytes -= len(evicted)

    def offsets(self, size: int) -> range:
        """Offsets of an item's chunks (one, at 0, for an empty item)."""
        return range(0, max(size, 1), self.chunk_bytes)


def _encode_all(
    path: Path | MediaSource, head: dict[str, Any], spans: list[tuple[int, int]], size: int
) -> list[bytes | BaseException]:
    """In a thread: the frames of `spans` ((offset, length) of one item), each its frame or its error."""
    out: list[bytes | BaseException] = []
    for offset, length in spans:
        try:
            out.append(_encode(path, head, offset, length, size))
        except Exception as exc:  # this chunk's error, for whoever asks for it
            out.append(exc)
    return out


def _retrieve(task: asyncio.Future[Any]) -> None:
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
        frames.chunk(head, offset, data, offset + length >= size),
        use_bin_type=True,
    )
    return frame
