"""The output cache: envelopes recorded as they are yielded, rebuilt byte for byte by `resend` jobs, bounded."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from podstream import wire
from podstream.jobspec import JobInputError, parse_seqs
from tests.worker.support import collect, reassemble
from worker.cache import CacheConfig, CachedRun, OutputCache, Selection, default_root
from worker.handler import HandlerConfig, make_handler
from worker.model import Context, File, FunctionModel, Request, Result
from worker.upload import UploadConfig


def files_model(sizes: dict[int, int]) -> FunctionModel:
    def generate(request: Request, ctx: Context) -> Result:
        if request.prompt == "fail":
            raise RuntimeError("no")
        size = sizes.get(request.index, 3000)
        return File(bytes((request.index * 7 + i) % 251 for i in range(size)), "application/octet-stream")

    return FunctionModel(generate, {"text-to-image"})


def job(job_id: str, prompts: list[str], **extra: Any) -> dict[str, Any]:
    items = [{"prompt": p, "id": f"i{n}"} for n, p in enumerate(prompts)]
    return {
        "id": job_id,
        "input": {"task": "text-to-image", "items": items, "output": {"part_bytes": 1024}, **extra},
    }


def config(root: Path, **changes: Any) -> HandlerConfig:
    cache = CacheConfig(root=root, **changes)
    return HandlerConfig(cache=cache, upload=UploadConfig(), progress_interval_s=0.05)


async def resend(root: Path, request: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A resend job answered by a *fresh* handler (another worker sharing the cache directory)."""
    out = await collect(
        make_handler(files_model({}), config(root))({"id": "resend-1", "input": {"resend": request}})
    )
    assert "resent" in out[-1] and len(out[-1]) == 1
    return out[:-1], out[-1]["resent"]


async def test_a_resend_yields_the_original_envelopes_exactly(tmp_path: Path) -> None:
    original = await collect(
        make_handler(files_model({1: 5000}), config(tmp_path))(job("job-a", ["x", "y", "fail"]))
    )
    assert reassemble(original, "job-a").problems == []
    by_seq = {e["seq"]: e for e in original}
    parts = [e["seq"] for e in original if e["type"] == "part"]
    wanted = [parts[0], parts[3], original[-1]["seq"]]  # a part, a part of item 1, the manifest
    again, summary = await resend(tmp_path, {"job": "job-a", "seqs": wanted})
    assert again == [by_seq[s] for s in wanted]  # same job, run, seq, data: indistinguishable
    assert summary["count"] == 3 and summary["missing"] == [] and summary["complete"] is True
    assert summary["run"] == original[0]["run"]

    # Ranges, `after` and whole items select too; every envelope of item 1 is its parts (and no progress).
    again, _ = await resend(tmp_path, {"job": "job-a", "seqs": [[1, 3]], "after": len(original) - 2})
    assert [e["seq"] for e in again] == [1, 2, 3, len(original) - 1, len(original)]
    again, _ = await resend(tmp_path, {"job": "job-a", "items": [1, 2]})
    assert {e["type"] for e in again} == {"part", "error"}
    assert {e["item"] for e in again} == {1, 2}
    assert again == [by_seq[e["seq"]] for e in again]

    # Feeding the original minus some seqs, then the resent copies, completes the job.
    dropped = {parts[1], original[-1]["seq"]}
    again, _ = await resend(tmp_path, {"job": "job-a", "seqs": sorted(dropped)})
    kept = [e for e in original if e["seq"] not in dropped]
    assert reassemble(kept + again, "job-a").problems == []


async def test_a_resend_names_what_it_does_not_have(tmp_path: Path) -> None:
    await collect(make_handler(files_model({}), config(tmp_path))(job("job-b", ["x"])))
    again, summary = await resend(tmp_path, {"job": "job-b", "seqs": [1, 999]})
    assert [e["seq"] for e in again] == [1]
    assert summary["missing"] == [999] and summary["reason"] == "incomplete_cache"

    again, summary = await resend(tmp_path, {"job": "unknown-job", "seqs": [1]})
    assert again == [] and summary["reason"] == "not_cached" and summary["count"] == 0

    # The item's file is gone (or cut short): its parts cannot be rebuilt and are reported, not faked.
    cached = OutputCache(CacheConfig(root=tmp_path)).open("job-b")
    assert cached is not None
    (cached.directory / "0.bin").write_bytes(b"short")
    again, summary = await resend(tmp_path, {"job": "job-b", "items": [0]})
    assert again == [] and summary["unavailable"] == [1, 2, 3]


async def test_malformed_resend_jobs_fail_with_a_clear_message(tmp_path: Path) -> None:
    handler = make_handler(files_model({}), config(tmp_path))
    cases = [
        ({"resend": {"job": "a"}}, "give 'seqs', 'after' or 'items'"),
        ({"resend": {"job": "a", "seqs": [0]}}, "input.resend.seqs"),
        ({"resend": {"job": "a", "seqs": [[5, 2]]}}, "input.resend.seqs"),
        ({"resend": {"job": "a", "seqs": [[1, 10**12]]}}, "at most"),
        ({"resend": {"job": "a", "seqs": [1], "bogus": 1}}, "input.resend.bogus: unknown field"),
        ({"resend": {"job": "a", "seqs": [1]}, "task": "text-to-image"}, "only the key 'resend'"),
    ]
    for payload, message in cases:
        with pytest.raises(JobInputError, match=message.replace("(", r"\(").replace("[", r"\[")):
            await collect(handler({"id": "r", "input": payload}))


def write_run(cache: OutputCache, job: str, run: str, items: dict[int, bytes]) -> list[dict[str, Any]]:
    envs = wire.Envelopes(job, run=run)
    writer = cache.writer(job, run)
    out: list[dict[str, Any]] = []
    manifest = []
    for item, data in items.items():
        writer.put_item(item, data)
        for envelope in envs.parts(item, data, mime="image/png", part_bytes=1000):
            writer.record(envelope)
            out.append(envelope)
        manifest.append(
            wire.ManifestItem(
                item, "", "ok", "image/png", len(data), wire.sha256_hex(data), -(-len(data) // 1000)
            )
        )
    for page in envs.manifest(manifest):
        writer.record(page)
        out.append(page)
    writer.close()
    return out


def test_runs_of_a_job_and_a_torn_log(tmp_path: Path) -> None:
    cache = OutputCache(CacheConfig(root=tmp_path))
    first = write_run(cache, "job", "run-1", {0: os.urandom(2500)})
    time.sleep(0.01)
    second = write_run(cache, "job", "run-2", {0: os.urandom(1500)})
    latest = cache.open("job")
    assert latest is not None and latest.run == "run-2" and latest.complete
    older = cache.open("job", "run-1")
    assert older is not None and list(older.envelopes(Selection(after=0))) == first
    assert cache.open("job", "run-3") is None and cache.open("other") is None
    # A worker killed mid-write leaves a torn last line: everything before it still resends.
    with open(latest.directory / "envelopes.jsonl", "a") as f:
        f.write('{"v":1,"seq":')
    assert list(latest.envelopes(Selection(after=0))) == second
    # Job ids become hashed directory names: nothing of the id reaches the file system.
    write_run(cache, "../../etc/x", "r", {0: b"abc"})
    assert all(len(p.name) == 32 for p in tmp_path.iterdir())
    assert CachedRun.load(tmp_path / "nothing") is None


def test_sweep_applies_the_ttl_then_the_size_bound(tmp_path: Path) -> None:
    cache = OutputCache(CacheConfig(root=tmp_path, ttl_s=100, max_bytes=14_000))
    write_run(cache, "old", "r", {0: os.urandom(3000)})
    write_run(cache, "mid", "r", {0: os.urandom(3000)})
    write_run(cache, "new", "r", {0: os.urandom(3000)})
    now = time.time()
    for name, age in (("old", 500), ("mid", 50), ("new", 10)):
        run_dir = next(cache.job_dir(name).iterdir())
        for path in run_dir.iterdir():
            os.utime(path, (now - age, now - age))
    cache.sweep(now)
    assert cache.open("old") is None  # past its TTL
    assert cache.open("mid") is not None and cache.open("new") is not None
    write_run(cache, "newest", "r", {0: os.urandom(5000)})
    cache.sweep(time.time())
    # Over 14 kB: the oldest job goes first, until the rest fits.
    assert cache.open("mid") is None
    assert cache.open("new") is not None and cache.open("newest") is not None


async def test_a_job_does_not_wait_for_the_sweep_which_runs_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Walking a big shared cache takes a while: the job streams meanwhile, and the sweep, which starts
    once the job's own run is on disk, leaves that run alone. At most one sweep runs, at most once a
    `cache_sweep_interval_s`."""
    release, sweeps = threading.Event(), []
    real_sweep = OutputCache.sweep

    def slow_sweep(self: OutputCache, now: float | None = None) -> list[Path]:
        sweeps.append([p.name for p in self.root.iterdir()])  # what was on disk when it started
        release.wait(10)
        return real_sweep(self, now)

    monkeypatch.setattr(OutputCache, "sweep", slow_sweep)
    cfg = replace(config(tmp_path), cache_sweep_interval_s=0.0)
    handler = make_handler(files_model({}), cfg)
    try:
        first = await collect(handler(job("job-s", ["x", "y"])))  # finishes while the sweep is stuck
        assert reassemble(first, "job-s").problems == []
        assert sweeps == [[OutputCache(CacheConfig(root=tmp_path)).job_dir("job-s").name]]
        second = await collect(handler(job("job-t", ["x"])))
        assert reassemble(second, "job-t").problems == []
        assert len(sweeps) == 1  # the first one still runs: no second beside it
    finally:
        release.set()
    deadline = time.monotonic() + 10
    while any(t.name == "podstream-cache-sweep" for t in threading.enumerate()):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert OutputCache(CacheConfig(root=tmp_path)).open("job-s") is not None  # its own run, kept


def test_one_job_bigger_than_the_cache_stops_caching_its_items(tmp_path: Path) -> None:
    writer = OutputCache(CacheConfig(root=tmp_path, max_bytes=4000)).writer("big", "r")
    assert writer.put_item(0, b"x" * 3000)
    assert not writer.put_item(1, b"x" * 3000)
    assert writer.put_item(2, b"x" * 500)
    writer.close()


def test_where_the_cache_lives(tmp_path: Path) -> None:
    assert default_root({"PODSTREAM_CACHE_DIR": str(tmp_path / "c")}) == tmp_path / "c"
    volume = tmp_path / "volume"
    volume.mkdir()
    assert default_root({"PODSTREAM_VOLUME": str(volume)}) == volume / "podstream-cache"
    fallback = default_root({"PODSTREAM_VOLUME": str(tmp_path / "not-mounted")})
    assert fallback.name == "podstream-cache" and fallback.parent != volume
    cfg = CacheConfig.from_env({"PODSTREAM_CACHE_DIR": str(tmp_path), "PODSTREAM_CACHE_TTL_S": "60"})
    assert (cfg.root, cfg.ttl_s, cfg.enabled) == (tmp_path, 60.0, True)
    assert not CacheConfig.from_env({"PODSTREAM_CACHE_MAX_BYTES": "0"}).enabled
    with pytest.raises(ValueError, match="PODSTREAM_CACHE_TTL_S"):
        CacheConfig.from_env({"PODSTREAM_CACHE_TTL_S": "soon"})


async def test_a_job_streams_normally_when_its_cache_cannot_be_written(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    envelopes = await collect(make_handler(files_model({}), config(blocked))(job("job-c", ["x", "y"])))
    assert reassemble(envelopes, "job-c").problems == []
    _, summary = await resend(blocked, {"job": "job-c", "seqs": [1]})
    assert summary["reason"] == "not_cached"


async def test_a_cache_turned_off_says_so(tmp_path: Path) -> None:
    handler = make_handler(files_model({}), config(tmp_path, max_bytes=0))
    await collect(handler(job("job-d", ["x"])))
    out = await collect(handler({"id": "r", "input": {"resend": {"job": "job-d", "seqs": [1]}}}))
    assert out == [{"resent": {"job": "job-d", "run": None, "count": 0, "reason": "no_cache"}}]
    assert not any(os.scandir(tmp_path))


def test_parse_seqs() -> None:
    assert parse_seqs([3, [5, 7], 3]) == {3, 5, 6, 7}
    for bad in ([0], [True], ["1"], [[1]], [[3, 2]], [[1, 2, 3]], [1.0]):
        with pytest.raises(ValueError):
            parse_seqs(bad)
    with pytest.raises(ValueError, match="at most 10"):
        parse_seqs([[1, 11]], limit=10)
    assert json.loads(json.dumps(sorted(parse_seqs([[1, 2]])))) == [1, 2]
