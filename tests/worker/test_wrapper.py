"""worker.wrap: any existing handler's files come out as verified items, its result with references, paged.

In-process tests feed the wrapped generator's envelopes to `wire.Assembler`; the SDK tests run the real
runpod worker loop against the emulator (tests/worker/wrapped.py) and drain `/stream` as a consumer does.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

import worker
from podstream import wire
from podstream.emulator import Emulator, EmulatorConfig
from tests.worker.support import Reassembled, reassemble
from tests.worker.wrapped import b64, payload
from worker.cache import CacheConfig
from worker.wrapper import WrapConfig

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"}


def run(handler: Any, job_input: Any = None, config: WrapConfig | None = None) -> Reassembled:
    wrapped = worker.wrap(handler, config or WrapConfig())
    assert inspect.isasyncgenfunction(wrapped)  # what the SDK needs to stream at all

    async def drain() -> list[dict[str, Any]]:
        return [e async for e in wrapped({"id": "job-1", "input": job_input})]

    return reassemble(asyncio.run(drain()), "job-1")


def result_with_files(got: Reassembled) -> Any:
    assert got.assembler.result is not None
    return wire.substitute(got.assembler.result.value, got.file)


def png(width: int = 8, height: int = 6) -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(width).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")  # noise: a few KB, like a real picture
    return buffer.getvalue()


def test_every_kind_of_file_is_found_and_the_structure_comes_back(tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(100))
    outside = tmp_path.parent / "outside.txt"
    outside.write_text("not under the output dir")
    picture = Image.new("RGB", (5, 4), (1, 2, 3))
    array = np.full((3, 2, 3), 7, dtype=np.uint8)

    def handler(job: dict[str, Any]) -> Any:
        return {
            "b64": base64.b64encode(png(40, 40)).decode(),
            "data_url": "data:image/webp;base64," + base64.b64encode(b"RIFF....WEBPVP8 ").decode(),
            "raw": b"\x89PNG\r\n\x1a\n" + bytes(10),
            "pil": picture,
            "array": array,
            "path": str(tmp_path / "clip.mp4"),
            "nested": [{"deep": Path(tmp_path / "clip.mp4")}],
            "kept": {
                "short_b64": "aGVsbG8=",
                "numbers": np.arange(3),
                "other_path": str(outside),
                "text": "a prompt / with slashes",
            },
            "own": {"$file": 3},
        }

    got = run(handler, config=WrapConfig(output_dir=tmp_path))
    assert got.problems == []
    mimes = {c.id: c.mime for c in got.assembler.completed.values()}
    assert mimes == {
        "b64": "image/png",
        "data_url": "image/webp",
        "raw": "image/png",
        "pil": "image/png",
        "array": "image/png",
        "path": "video/mp4",
        "nested.0.deep": "video/mp4",
    }
    value = result_with_files(got)
    assert value["b64"] == png(40, 40) and value["raw"] == b"\x89PNG\r\n\x1a\n" + bytes(10)
    assert Image.open(io.BytesIO(value["pil"])).getpixel((0, 0)) == (1, 2, 3)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(value["array"]))), array)
    assert value["path"] == value["nested"][0]["deep"] == (tmp_path / "clip.mp4").read_bytes()
    assert value["kept"] == {
        "short_b64": "aGVsbG8=",
        "numbers": [0, 1, 2],
        "other_path": str(outside),
        "text": "a prompt / with slashes",
    }
    assert value["own"] == {"$file": 3}  # the handler's own `$file` key is not a reference
    order = [e["type"] for e in got.envelopes]
    assert order[-2:] == ["result", "manifest"] and set(order[:-2]) == {"part"}


def test_without_an_output_dir_paths_stay_strings(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    got = run(lambda job: {"path": str(tmp_path / "a.png")})
    assert got.assembler.completed == {} and result_with_files(got) == {"path": str(tmp_path / "a.png")}


@pytest.mark.parametrize("kind", ["function", "async_function", "generator", "async_generator"])
def test_sync_async_functions_and_generators(kind: str) -> None:
    from tests.worker import wrapped

    got = run(wrapped.HANDLERS[kind], {"files": 3, "size": 3000})
    assert got.problems == [] and len(got.assembler.completed) == 3
    value = result_with_files(got)
    if kind.endswith("function"):
        assert value == {"images": [payload(k, 3000) for k in range(3)], "count": 3}
    else:  # a generator's result is the list of its yields, as RunPod's aggregate stream would be
        key = "video" if kind == "generator" else "image"
        assert value == [{"index": k, key: payload(k, 3000)} for k in range(3)]


def test_generator_files_are_streamed_as_soon_as_they_are_yielded() -> None:
    seen: list[str] = []

    async def handler(job: dict[str, Any]) -> Any:
        for k in range(3):
            seen.append(f"yield {k}")
            yield {"f": b64(k, 2000)}

    async def drain() -> None:
        async for envelope in worker.wrap(handler, WrapConfig())({"id": "j", "input": {}}):
            seen.append(f"{envelope['type']} {envelope.get('item', '')}")

    asyncio.run(drain())
    assert seen == [
        "yield 0", "part 0", "yield 1", "part 1", "yield 2", "part 2", "result ", "manifest ",
    ]  # fmt: skip


def test_a_sync_handler_runs_off_the_event_loop() -> None:
    def slow(job: dict[str, Any]) -> Any:
        time.sleep(0.3)
        return {"ok": True}

    async def both() -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        [e async for e in worker.wrap(slow, WrapConfig())({"id": "j", "input": {}})]
        task.cancel()
        return ticks

    assert asyncio.run(both()) > 5  # the loop kept running while the handler slept


def test_a_large_result_is_paged_and_every_body_fits() -> None:
    notes = ["x" * 1000 + '"' * 1000] * 2000  # ~4 MB once escaped, no files
    got = run(lambda job: {"notes": notes, "file": b64(0, 900_000)})
    assert got.problems == []
    pages = got.of_type("result")
    assert len(pages) > 4 and max(wire.body_size(e) for e in got.envelopes) <= wire.DEFAULT_BODY_BUDGET
    assert result_with_files(got) == {"notes": notes, "file": payload(0, 900_000)}


def test_a_handler_exception_keeps_failed_semantics_and_the_files_streamed() -> None:
    from tests.worker import wrapped

    wrapped_handler = worker.wrap(wrapped.async_generator, WrapConfig())
    envelopes: list[dict[str, Any]] = []

    async def drain() -> None:
        async for envelope in wrapped_handler(
            {"id": "job-1", "input": {"files": 3, "size": 2000, "fail_at": 2}}
        ):
            envelopes.append(envelope)

    with pytest.raises(RuntimeError, match="the GPU fell over at file 2"):
        asyncio.run(drain())
    got = reassemble(envelopes, "job-1")
    assert got.problems == [] and sorted(got.assembler.completed) == [0, 1]  # complete, with a manifest
    assert got.assembler.result is None and got.of_type("manifest")


def test_an_error_dict_ends_the_job_as_runpod_does() -> None:
    from tests.worker import wrapped

    envelopes = asyncio.run(
        _collect(worker.wrap(wrapped.error_dict, WrapConfig()), {"files": 3, "size": 2000, "fail_at": 1})
    )
    assert envelopes[-1] == {"error": "out of memory at file 1"}  # the SDK ends the job FAILED with it
    got = reassemble(envelopes[:-1], "job-1")
    assert got.problems == [] and sorted(got.assembler.completed) == [0]


def test_a_file_that_cannot_be_encoded_fails_that_item_only() -> None:
    class Broken(Image.Image):
        def save(self, *args: Any, **kwargs: Any) -> None:
            raise OSError("disk full")

    got = run(lambda job: {"bad": Broken(), "good": b"\x00" * 10})
    assert got.assembler.failed[0].code == "file_failed"
    assert "OSError: disk full" in got.assembler.failed[0].message
    assert got.assembler.result is not None and got.problems == []
    value = wire.substitute(got.assembler.result.value, lambda i: got.file(i) if i == 1 else None)
    assert value == {"bad": None, "good": b"\x00" * 10}


def test_wrap_refuses_what_is_not_a_handler_and_reads_its_env() -> None:
    with pytest.raises(TypeError, match="needs a handler function"):
        worker.wrap(42)  # type: ignore[arg-type]
    config = WrapConfig.from_env({"PODSTREAM_OUTPUT_DIR": "/tmp/out", "PODSTREAM_WRAP_MIN_BASE64": "64"})
    assert (config.min_base64_chars, config.output_dir) == (64, Path("/tmp/out"))
    assert config.cache is not None and config.cache.enabled  # as for the built-in worker
    off = WrapConfig.from_env({"PODSTREAM_CACHE_MAX_BYTES": "0"}).cache
    assert off is not None and not off.enabled
    with pytest.raises(ValueError, match="PODSTREAM_WRAP_MIN_BASE64='x' is not a number"):
        WrapConfig.from_env({"PODSTREAM_WRAP_MIN_BASE64": "x"})


async def _collect(handler: Any, job_input: Any) -> list[dict[str, Any]]:
    return [e async for e in handler({"id": "job-1", "input": job_input})]


# ------------------------------------------------------------------ the real SDK loop against the emulator


def drain_stream(client: httpx.Client, endpoint: str, job_id: str) -> tuple[str, list[dict[str, Any]]]:
    outputs: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = client.get(f"{endpoint}/stream/{job_id}", params={"wait": 2000}).json()
        outputs += [chunk["output"] for chunk in body.get("stream", [])]
        if body["status"] in TERMINAL and not body.get("stream"):
            return str(body["status"]), outputs
    raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture(params=["function", "raises", "error_dict"])
def sdk_worker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Emulator]]:
    with Emulator(EmulatorConfig(ping_interval_ms=2000)).serve_in_thread() as emu:
        env = {"WRAP_MODE": request.param, "PYTHONPATH": str(ROOT)}
        emu.spawn_workers(
            1, [sys.executable, "-m", "tests.worker.wrapped"], env=env, cwd=ROOT, log_dir=tmp_path
        )
        yield request.param, emu


def test_the_real_sdk_streams_a_wrapped_handler(sdk_worker: tuple[str, Emulator]) -> None:
    mode, emu = sdk_worker
    spec: dict[str, Any] = {"files": 12, "size": 600_000}  # 7.2 MB of base64: over the cap as one result
    if mode in ("raises", "error_dict"):
        spec["fail_at"] = 5
    with httpx.Client(timeout=30) as client:
        job_id = client.post(f"{emu.endpoint_url}/run", json={"input": spec}).json()["id"]
        status, outputs = drain_stream(client, emu.endpoint_url, job_id)
        got = reassemble(outputs, job_id)
        final = client.get(f"{emu.endpoint_url}/status/{job_id}").json()
    assert emu.stats()["routes"]["job-stream"]["max_request_bytes"] <= wire.DEFAULT_BODY_BUDGET
    assert got.problems == []
    if mode == "function":
        assert status == "COMPLETED"
        assert result_with_files(got) == {"images": [payload(k, 600_000) for k in range(12)], "count": 12}
        return
    assert status == "FAILED" and got.assembler.result is None
    assert sorted(got.assembler.completed) == [0, 1, 2, 3, 4]  # streamed before the failure, complete
    expected = "the GPU fell over at file 5" if mode == "raises" else "out of memory at file 5"
    assert expected in final["error"]
    assert all(got.file(k) == payload(k, 600_000) for k in range(5))


def test_the_wrapped_worker_takes_the_next_job_after_one(tmp_path: Path) -> None:
    with Emulator(EmulatorConfig(ping_interval_ms=2000)).serve_in_thread() as emu:
        env = {"WRAP_MODE": "generator", "PYTHONPATH": str(ROOT)}
        emu.spawn_workers(
            1, [sys.executable, "-m", "tests.worker.wrapped"], env=env, cwd=ROOT, log_dir=tmp_path
        )
        with httpx.Client(timeout=30) as client:
            for files in (2, 1):
                job_id = client.post(
                    f"{emu.endpoint_url}/run", json={"input": {"files": files, "size": 5000}}
                ).json()["id"]
                status, outputs = drain_stream(client, emu.endpoint_url, job_id)
                got = reassemble(outputs, job_id)
                assert status == "COMPLETED" and got.problems == []
                assert result_with_files(got) == [
                    {"index": k, "video": payload(k, 5000)} for k in range(files)
                ]


def test_a_resend_job_is_answered_from_the_output_cache_without_the_handler(tmp_path: Path) -> None:
    calls: list[Any] = []

    def handler(job: dict[str, Any]) -> Any:
        calls.append(job["input"])
        return {"files": [b64(0, 5000), b64(1, 700_000)]}

    wrapped = worker.wrap(handler, WrapConfig(cache=CacheConfig(root=tmp_path / "cache")))
    first = asyncio.run(_collect_job(wrapped, {"id": "job-1", "input": {"n": 2}}))
    lost = [e["seq"] for e in first if e["type"] in ("part", "result")]
    again = asyncio.run(
        _collect_job(wrapped, {"id": "resend-1", "input": {"resend": {"job": "job-1", "seqs": lost}}})
    )
    assert calls == [{"n": 2}]  # the resend never reached the handler
    assert again[-1]["resent"]["count"] == len(lost) and again[-1]["resent"]["missing"] == []
    by_seq = {e["seq"]: e for e in first}
    assert again[:-1] == [by_seq[s] for s in lost]  # the very envelopes, data included
    survivor = [e for e in first if e["seq"] not in lost]  # as if only those had arrived, then the resend
    got = reassemble(survivor + again[:-1], "job-1")
    assert got.problems == [] and result_with_files(got) == {"files": [payload(0, 5000), payload(1, 700_000)]}


async def _collect_job(handler: Any, job: dict[str, Any]) -> list[dict[str, Any]]:
    return [e async for e in handler(job)]
