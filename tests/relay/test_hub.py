"""`relay.hub.ChunkCache`: shared reads and encodings, byte accounting, errors; `relay.hub.VerifiedMedia`:
one media check per item however many subscribers; and both end to end.

The cache is driven through `frame` and `cached` on real files; the end-to-end test runs a real relay
with N websocket subscribers of one job and checks every subscriber got every byte from one read per chunk
and one check per item.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any, cast

import httpx
import msgpack
import pytest

from podstream.emulator import Emulator
from relay.hub import ChunkCache, VerifiedMedia
from relay.storage.errors import MediaGone
from relay.storage.job import JobStore
from relay.storage.local.store import DiskJobStore
from tests.relay.conftest import (
    Batch,
    Received,
    ScriptedWorker,
    consume,
    make_files,
    pack,
    recv,
    relay_settings,
    start_relay,
    ws_client,
)

CHUNK = 64 * 1024
HEAD = {"job": "j", "seq": 7, "item": 0}


def frame_data(frame: bytes) -> dict[str, Any]:
    decoded: dict[str, Any] = msgpack.unpackb(frame, raw=False)
    return decoded


def held_bytes(cache: ChunkCache) -> int:
    """What the cache really holds, to compare with what it counts."""
    return sum(len(f) for f in cache._frames.values())


async def read_all(cache: ChunkCache, path: Path, size: int) -> bytes:
    out = bytearray()
    for offset in cache.offsets(size):
        frame = frame_data(await cache.frame(path, HEAD, offset, size))
        assert frame["off"] == offset and frame["t"] == "chunk" and frame["seq"] == 7
        assert frame["last"] == (offset + CHUNK >= size)
        out += frame["data"]
    return bytes(out)


@pytest.fixture
def media(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(10 * CHUNK + 123)  # 11 chunks, the last one short
    path = tmp_path / "0.bin"
    path.write_bytes(data)
    return path, data


async def test_readers_in_lockstep_share_one_load_per_chunk(media: tuple[Path, bytes]) -> None:
    path, data = media
    cache = ChunkCache(max_bytes=64 * CHUNK, chunk_bytes=CHUNK)
    readers = 20
    results = await asyncio.gather(*(read_all(cache, path, len(data)) for _ in range(readers)))
    assert all(r == data for r in results)
    chunks = len(cache.offsets(len(data)))
    assert cache.misses == chunks, "one read and one encoding per chunk, not one per reader"
    assert cache.hits == (readers - 1) * chunks
    assert cache.joined > 0, "readers in lockstep joined loads in flight"
    assert cache.hit_rate == pytest.approx((readers - 1) / readers)
    assert len(cache) == chunks
    assert cache.bytes == held_bytes(cache)


async def test_bytes_count_each_held_frame_once_through_evictions(media: tuple[Path, bytes]) -> None:
    path, data = media
    frame_size = len(await ChunkCache(10**9, CHUNK).frame(path, HEAD, 0, len(data)))
    cache = ChunkCache(max_bytes=3 * frame_size, chunk_bytes=CHUNK)  # room for 3 of the 11 chunks
    for _ in range(5):  # every pass evicts and loads every chunk again
        results = await asyncio.gather(*(read_all(cache, path, len(data)) for _ in range(4)))
        assert all(r == data for r in results)
        assert cache.bytes == held_bytes(cache) <= cache.max_bytes
    assert 0 < len(cache) <= 3, "a cache that counts phantom bytes ends up holding nothing"


async def test_a_frame_inserted_again_replaces_its_bytes(media: tuple[Path, bytes]) -> None:
    path, data = media
    cache = ChunkCache(max_bytes=64 * CHUNK, chunk_bytes=CHUNK, readahead=1)
    await cache.frame(path, HEAD, 0, len(data))
    counted = cache.bytes
    cache._insert((str(path), 0), cache._frames[(str(path), 0)])  # as a second load of the same chunk would
    assert cache.bytes == counted == held_bytes(cache)
    assert len(cache) == 1


async def test_a_frame_larger_than_the_cache_is_served_not_kept(media: tuple[Path, bytes]) -> None:
    path, data = media
    cache = ChunkCache(max_bytes=100, chunk_bytes=CHUNK)  # under even the short last chunk
    assert await read_all(cache, path, len(data)) == data
    assert len(cache) == 0 and cache.bytes == 0
    assert cache.misses == len(cache.offsets(len(data)))


async def test_an_empty_item_is_one_last_chunk(tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.write_bytes(b"")
    cache = ChunkCache(max_bytes=CHUNK, chunk_bytes=CHUNK)
    frame = frame_data(await cache.frame(path, HEAD, 0, 0))
    assert frame["data"] == b"" and frame["last"] is True


async def test_a_short_file_fails_every_waiter_and_is_not_cached(media: tuple[Path, bytes]) -> None:
    path, data = media
    cache = ChunkCache(max_bytes=64 * CHUNK, chunk_bytes=CHUNK)
    claimed = len(data) + CHUNK  # the record says more bytes than the file has
    last = cache.offsets(claimed)[-1]
    outcomes = await asyncio.gather(
        *(cache.frame(path, HEAD, last, claimed) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(o, FileNotFoundError) for o in outcomes), outcomes
    assert "shorter than its record says" in str(outcomes[0])
    assert cache.misses == 1 and cache.joined == 4
    assert len(cache) == 0 and cache.bytes == 0
    with pytest.raises(FileNotFoundError):  # not remembered as a failure either: the next ask loads again
        await cache.frame(path, HEAD, last, claimed)
    assert cache.misses == 2


async def test_a_missing_file_raises_oserror(tmp_path: Path) -> None:
    cache = ChunkCache(max_bytes=CHUNK, chunk_bytes=CHUNK)
    with pytest.raises(FileNotFoundError):
        await cache.frame(tmp_path / "gone.bin", HEAD, 0, 10)
    assert len(cache) == 0 and cache.bytes == 0


async def test_a_cancelled_waiter_does_not_cancel_the_shared_load(media: tuple[Path, bytes]) -> None:
    path, data = media
    cache = ChunkCache(max_bytes=64 * CHUNK, chunk_bytes=CHUNK)
    first = asyncio.ensure_future(cache.frame(path, HEAD, 0, len(data)))
    second = asyncio.ensure_future(cache.frame(path, HEAD, 0, len(data)))
    await asyncio.sleep(0)  # both are waiting on the one load
    assert cache.misses == 1 and cache.joined == 1
    first.cancel()
    frame = frame_data(await second)
    assert frame["data"] == data[:CHUNK]
    assert first.cancelled()
    assert (str(path), 0) in cache._frames  # the load ended and was kept for the others


async def test_a_load_reads_ahead_and_the_counts_stay_one_miss_per_chunk(media: tuple[Path, bytes]) -> None:
    path, data = media
    cache = ChunkCache(max_bytes=64 * CHUNK, chunk_bytes=CHUNK, readahead=4)
    first = frame_data(await cache.frame(path, HEAD, 0, len(data)))
    assert first["data"] == data[:CHUNK]
    assert len(cache) == 4 and cache.misses == 1  # chunks 1-3 held, not counted until they are served
    assert cache.cached(path, CHUNK) is not None and (cache.hits, cache.misses) == (0, 2)
    assert await read_all(cache, path, len(data)) == data  # one reader: every chunk is a miss, once
    assert (cache.hits, cache.misses) == (2, 11)  # chunks 0 and 1 a second time


def test_a_small_cache_reads_one_chunk_at_a_time() -> None:
    assert ChunkCache(max_bytes=16 * 4 * CHUNK, chunk_bytes=CHUNK, readahead=4).readahead == 4
    assert ChunkCache(max_bytes=16 * 4 * CHUNK - 1, chunk_bytes=CHUNK, readahead=4).readahead == 1


async def test_cached_gives_held_frames_only_and_counts_them_as_hits(media: tuple[Path, bytes]) -> None:
    path, data = media
    cache = ChunkCache(max_bytes=64 * CHUNK, chunk_bytes=CHUNK, readahead=1)
    assert cache.cached(path, 0) is None and cache.hits == 0  # not held: the caller loads it
    loaded = await cache.frame(path, HEAD, 0, len(data))
    assert cache.cached(path, 0) == loaded and cache.cached(path, CHUNK) is None
    assert (cache.hits, cache.misses) == (1, 1)


class FakeStore:
    """A job store whose `check_media` counts its calls (from its thread) and can be told to fail."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.calls = 0
        self.gone = False
        self.release = threading.Event()

    def check_media(self, record: dict[str, Any]) -> Path | None:
        self.calls += 1
        self.release.wait(10)  # held until the test has every subscriber waiting
        if self.gone:
            raise MediaGone("the file of item 0 is damaged")
        return self.path if record.get("_file") else None


async def test_media_is_checked_once_however_many_subscribers_ask(media: tuple[Path, bytes]) -> None:
    path, _data = media
    fake = FakeStore(path)
    store = cast(JobStore, fake)
    checks = VerifiedMedia()
    record = {"k": "item", "item": 0, "_file": "1/00000-a.bin"}
    waiting = [asyncio.ensure_future(checks.check(store, record)) for _ in range(8)]
    await asyncio.sleep(0.05)
    fake.release.set()
    assert await asyncio.gather(*waiting) == [path] * 8
    assert await checks.check(store, record) == path  # later: the answer kept, no check of its own
    assert fake.calls == 1
    assert await checks.check(store, {"k": "item", "item": 1}) is None  # a ref: nothing kept, nothing read
    assert fake.calls == 2


async def test_a_failed_check_reaches_its_waiters_and_is_not_kept(media: tuple[Path, bytes]) -> None:
    path, _data = media
    fake = FakeStore(path)
    fake.gone = True
    store = cast(JobStore, fake)
    checks = VerifiedMedia()
    record = {"k": "item", "item": 0, "_file": "1/00000-a.bin"}
    waiting = [asyncio.ensure_future(checks.check(store, record)) for _ in range(3)]
    await asyncio.sleep(0.05)
    fake.release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, MediaGone) for r in results) and fake.calls == 1
    fake.gone = False
    assert await checks.check(store, record) == path  # the next subscriber checks again
    assert fake.calls == 2


# ------------------------------------------------------------------------------------ end to end


async def last_event(http: httpx.AsyncClient, url: str, after: int) -> dict[str, Any]:
    body = (await http.get(url, params={"format": "json", "after": after, "wait": 10000})).json()
    last: dict[str, Any] = body["events"][-1] if body["events"] else {"k": "", "seq": after}
    return last


async def test_subscribers_of_one_job_share_reads_and_metrics_count_them(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[int] = []
    check_media = DiskJobStore.check_media

    def counted(self: DiskJobStore, record: dict[str, Any]) -> Path | None:
        checked.append(record["item"])
        return check_media(self, record)

    monkeypatch.setattr(DiskJobStore, "check_media", counted)
    relay = await start_relay(relay_settings(tmp_path, emulator, chunk_bytes=CHUNK))
    try:
        async with relay.http() as http:
            job = (await http.post(f"{relay.url}/v1/jobs", json={"input": {}})).json()["id"]
            files = make_files(3, 3 * CHUNK)
            taken = await worker.take()
            for envelope in Batch(taken["id"], files).envelopes:
                await worker.post(job, envelope)
            await worker.done(job)
            events = f"{relay.url}/v1/jobs/{job}/events"
            after = 0
            while (last := await last_event(http, events, after))["k"] != "done":  # a long poll each
                after = last["seq"]

            async def subscriber() -> Received:
                async with ws_client(relay.ws_url, relay.token(job)) as ws:
                    await ws.send(pack({"t": "sub", "job": job, "from": 0}))
                    assert (await recv(ws))["t"] == "subscribed"
                    return await consume(ws, job, Received())

            readers = 8
            results = await asyncio.gather(*(subscriber() for _ in range(readers)))
            for got in results:
                assert [bytes(got.files[i]) for i in range(3)] == files
            cache = relay.relay.chunks
            chunks = sum(len(cache.offsets(len(f))) for f in files)
            assert cache.misses == chunks
            assert cache.hits == (readers - 1) * chunks
            assert sorted(checked) == [0, 1, 2]  # each item's file checked once, not once per subscriber
            metrics = (await http.get(f"{relay.url}/metrics")).text
            assert f"podstream_relay_chunk_cache_hits_total {float(cache.hits)}" in metrics
            assert f"podstream_relay_chunk_cache_misses_total {float(chunks)}" in metrics
            assert f"podstream_relay_chunk_cache_bytes {float(cache.bytes)}" in metrics
    finally:
        await relay.stop()
