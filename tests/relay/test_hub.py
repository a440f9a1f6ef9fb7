"""`relay.hub.ChunkCache`: shared reads and encodings, byte accounting, errors; and the hit rate end to end.

The cache is driven through its one method, `frame`, on real files; the end-to-end test runs a real relay
with N websocket subscribers of one job and checks every subscriber got every byte from one read per chunk.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from podstream.emulator import Emulator
from relay.hub import ChunkCache
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
    cache = ChunkCache(max_bytes=64 * CHUNK, chunk_bytes=CHUNK)
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
    assert len(cache) == 1


# ------------------------------------------------------------------------------------ end to end


async def last_event(http: httpx.AsyncClient, url: str, after: int) -> dict[str, Any]:
    body = (await http.get(url, params={"format": "json", "after": after, "wait": 10000})).json()
    last: dict[str, Any] = body["events"][-1] if body["events"] else {"k": "", "seq": after}
    return last


async def test_subscribers_of_one_job_share_reads_and_metrics_count_them(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
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
            metrics = (await http.get(f"{relay.url}/metrics")).text
            assert f"podstream_relay_chunk_cache_hits_total {float(cache.hits)}" in metrics
            assert f"podstream_relay_chunk_cache_misses_total {float(chunks)}" in metrics
            assert f"podstream_relay_chunk_cache_bytes {float(cache.bytes)}" in metrics
    finally:
        await relay.stop()
