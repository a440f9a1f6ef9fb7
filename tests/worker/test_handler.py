"""The handler end to end: real tiny diffusers pipelines -> real files, streamed as envelopes and reassembled."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import io
import itertools
import time
from collections.abc import Sequence
from typing import Any, Literal

import pytest
from PIL import Image as PILImage
from pydantic import BaseModel, ConfigDict, Field

from podstream import wire
from podstream.jobspec import JobInputError, Limits
from tests.worker.support import SERVED_PNG, Spy, collect, decode_video, png_base64, reassemble, serve_images
from worker.handler import HandlerConfig, make_handler
from worker.model import Context, File, FunctionModel, Image, Model, Request, Result, SleepModel, Video


def test_the_handler_is_an_async_generator_function(tiny: Model) -> None:
    # The SDK streams only when the handler itself is one (a function returning a generator hangs the job).
    assert inspect.isasyncgenfunction(make_handler(tiny))


async def test_image_to_video_end_to_end(tiny: Model) -> None:
    job = {
        "id": "job-i2v",
        "input": {
            "task": "image-to-video",
            "items": [{"image": png_base64(50, 40, seed=i), "id": f"clip-{i}", "seed": i} for i in range(3)],
            "params": {"frames": 8, "width": 64, "height": 64, "steps": 2, "fps": 8, "batch_size": 2},
        },
    }
    envelopes = await collect(make_handler(tiny)(job))
    got = reassemble(envelopes, "job-i2v")
    assert got.problems == []
    assert [e["seq"] for e in envelopes] == list(range(1, len(envelopes) + 1))
    assert envelopes[-1]["type"] == "manifest"
    assert sorted(got.assembler.completed) == [0, 1, 2]
    for item in range(3):
        complete = got.assembler.completed[item]
        assert (complete.id, complete.mime) == (f"clip-{item}", "video/mp4")
        assert decode_video(got.file(item)) == (8, 64, 64, "h264")
    assert all(wire.body_size(e) <= wire.DEFAULT_BODY_BUDGET for e in envelopes)
    manifest = got.assembler.manifest
    assert manifest is not None and manifest.errors == 0
    assert [m["status"] for m in manifest.items] == ["ok", "ok", "ok"]


async def test_text_to_image_end_to_end_with_sizes_and_formats(tiny: Model) -> None:
    job = {
        "id": "job-t2i",
        "input": {
            "task": "text-to-image",
            "items": [{"prompt": "a red cube", "seed": 1}, {"prompt": "a blue sphere"}],
            "params": {"width": 48, "height": 32, "steps": 2},
            "output": {"format": "jpeg", "quality": 70},
        },
    }
    got = reassemble(await collect(make_handler(tiny)(job)), "job-t2i")
    assert got.problems == []
    for item in (0, 1):
        assert got.assembler.completed[item].mime == "image/jpeg"
        with PILImage.open(io.BytesIO(got.file(item))) as picture:
            assert (picture.format, picture.size) == ("JPEG", (48, 32))


async def test_text_to_video_end_to_end_as_webm(tiny: Model) -> None:
    job = {
        "id": "job-t2v",
        "input": {"task": "text-to-video", "items": [{"prompt": "waves"}], "output": {"format": "webm"}},
    }
    got = reassemble(await collect(make_handler(tiny)(job)), "job-t2v")
    assert got.problems == []
    assert got.assembler.completed[0].mime == "video/webm"
    assert decode_video(got.file(0)) == (9, 32, 32, "vp9")


async def test_same_seed_same_file(tiny: Model) -> None:
    job = {"id": "j", "input": {"task": "text-to-image", "items": [{"prompt": "x", "seed": 5}] * 2}}
    got = reassemble(await collect(make_handler(tiny)(job)), "j")
    assert got.file(0) == got.file(1)


async def test_bad_items_fail_alone(tiny: Model) -> None:
    good = png_base64()
    items = [
        {"image": good, "id": "a"},
        {"image": "%%%", "id": "not-base64"},
        {"image": good, "id": "b"},
        "not an object",
        {"id": "no-image"},
        {"image": "data:image/png;base64,aGVsbG8=", "id": "not-an-image"},
        {"image": good, "id": "c"},
    ]
    job = {"id": "job-bad", "input": {"task": "image-to-video", "items": items, "params": {"batch_size": 3}}}
    got = reassemble(await collect(make_handler(tiny)(job)), "job-bad")
    assert got.problems == []
    assert sorted(got.assembler.completed) == [0, 2, 6]
    failed = got.assembler.failed
    assert {i: failed[i].code for i in failed} == {
        1: "bad_image",
        3: "bad_item",
        4: "bad_item",
        5: "bad_image",
    }
    assert failed[1].id == "not-base64" and failed[1].message.startswith("input.items[1].image:")
    manifest = got.assembler.manifest
    assert manifest is not None and manifest.errors == 4
    assert [m["status"] for m in manifest.items] == ["ok", "error", "ok", "error", "error", "error", "ok"]


@pytest.mark.parametrize(
    ("job_input", "message"),
    [
        (None, "the job has no input"),
        ({"task": "image-to-video"}, "input.items: Field required"),
        ({"task": "image-to-video", "items": [{"image": "x"}], "params": {"width": 60}}, "multiple of 8"),
        ({"task": "text-to-video", "items": [{"prompt": "x"}], "params": {"frames": 10}}, r"8k\+1"),
        (
            {"task": "text-to-image", "items": [{"prompt": "x"}], "params": {"frames": -1}},
            "input.params.frames",
        ),
    ],
)
async def test_a_malformed_job_fails_before_generating(tiny: Model, job_input: Any, message: str) -> None:
    spy = Spy(tiny)
    with pytest.raises(JobInputError, match=message):
        await collect(make_handler(spy)({"id": "j", "input": job_input}))
    assert spy.calls == 0


async def test_a_malformed_job_ends_failed_through_the_sdk(tiny: Model) -> None:
    # The SDK's own generator driver: an exception becomes {"error": ...}, which fails the job on /status.
    from runpod.serverless.modules.rp_job import run_job_generator

    job = {"id": "j", "input": {"task": "text-to-image", "items": [{"prompt": "x"}], "params": {"steps": 0}}}
    outputs = [o async for o in run_job_generator(make_handler(tiny), job)]
    assert len(outputs) == 1
    assert outputs[0]["error"].startswith(
        "handler: input.params.steps: Input should be greater than or equal to 1"
    )


async def test_a_task_the_model_does_not_do() -> None:
    model = FunctionModel(lambda r, c: File(b"x", "text/plain"), tasks={"text-to-image"})
    with pytest.raises(JobInputError, match="does not do 'image-to-video'; it does \\['text-to-image'\\]"):
        await collect(
            make_handler(model)({"id": "j", "input": {"task": "image-to-video", "items": [{"image": "x"}]}})
        )


async def test_generation_and_encoding_failures_fail_their_item_only() -> None:
    def generate(request: Request, ctx: Context) -> Result:
        ctx.step(1, 1)
        if request.prompt == "boom":
            raise RuntimeError("CUDA out of memory\nlong traceback")
        if request.prompt == "wrong":
            return "not a result"  # type: ignore[return-value]
        if request.prompt == "video":
            return Video([])  # no frames: the encoder refuses
        return Image(PILImage.new("RGB", (8, 8), "red"))

    items = [{"prompt": p} for p in ("ok", "boom", "wrong", "video", "ok")]
    job = {"id": "j", "input": {"task": "text-to-image", "items": items}}
    got = reassemble(await collect(make_handler(FunctionModel(generate, {"text-to-image"}))(job)), "j")
    assert got.problems == []
    assert sorted(got.assembler.completed) == [0, 4]
    failed = got.assembler.failed
    assert failed[1].code == "generation_failed"
    assert failed[1].message == "RuntimeError: CUDA out of memory"
    assert failed[2].code == "encode_failed" and "returned str" in failed[2].message
    assert failed[3].code == "encode_failed" and "made a video but the job asked for png" in failed[3].message


async def test_a_failing_batch_fails_its_items_and_frees_memory() -> None:
    class Flaky(SleepModel):
        def generate(self, batch: Sequence[Request], ctx: Context) -> Sequence[Result | BaseException]:
            if any(r.index == 2 for r in batch):
                raise MemoryError("out of memory")
            return super().generate(batch, ctx)

    spy = Spy(Flaky(0, 10))
    job = {
        "id": "j",
        "input": {"task": "text-to-image", "items": [{"prompt": "x"}] * 6, "params": {"batch_size": 2}},
    }
    got = reassemble(await collect(make_handler(spy)(job)), "j")
    assert sorted(got.assembler.completed) == [0, 1, 4, 5]
    assert {i: f.code for i, f in got.assembler.failed.items()} == {
        2: "generation_failed",
        3: "generation_failed",
    }
    assert spy.released == 1


async def test_a_model_returning_the_wrong_number_of_results() -> None:
    class Short(SleepModel):
        def generate(self, batch: Sequence[Request], ctx: Context) -> Sequence[Result | BaseException]:
            return list(super().generate(batch, ctx))[:-1]

    job = {
        "id": "j",
        "input": {"task": "text-to-image", "items": [{"prompt": "x"}] * 2, "params": {"batch_size": 2}},
    }
    got = reassemble(await collect(make_handler(Short(0, 10))(job)), "j")
    assert "returned 1 results for 2 inputs" in got.assembler.failed[0].message


async def test_large_files_are_split_under_the_cap() -> None:
    job = {
        "id": "j",
        "input": {"task": "text-to-video", "items": [{"prompt": "x"}] * 2, "output": {"part_bytes": 300_000}},
    }
    model = FunctionModel(lambda r, c: File(bytes([r.index]) * 2_000_000, "video/mp4"), {"text-to-video"})
    got = reassemble(await collect(make_handler(model)(job)), "j")
    assert got.problems == []
    parts = got.of_type("part")
    assert len(parts) == 2 * 7 and {p["parts"] for p in parts} == {7}
    assert max(wire.body_size(e) for e in got.envelopes) < 1_000_000
    assert got.file(1) == b"\x01" * 2_000_000
    manifest = got.assembler.manifest
    assert manifest is not None and [m["parts"] for m in manifest.items] == [7, 7]


async def test_progress_is_coalesced() -> None:
    interval = 0.2
    model = SleepModel(0.6, 100, steps=30)  # a step every 20 ms
    handler = make_handler(model, HandlerConfig(progress_interval_s=interval))
    job = {"id": "j", "input": {"task": "text-to-image", "items": [{"prompt": "x"}] * 2}}
    stamps: list[float] = []
    progress: list[dict[str, Any]] = []
    async for envelope in handler(job):
        if envelope["type"] == "progress":
            stamps.append(time.monotonic())
            progress.append(envelope)
    assert 2 <= len(progress) <= 60 // 10  # 60 steps: far fewer envelopes
    assert all(b - a >= interval * 0.99 for a, b in itertools.pairwise(stamps))
    assert all(0 < p["step"] <= p["steps"] == 30 for p in progress)


async def test_memory_is_bounded_the_generator_does_not_run_ahead() -> None:
    # A consumer that stops pulling (the SDK blocked on a slow POST) stalls generation after a few items.
    spy = Spy(SleepModel(0, 1000))
    stream = make_handler(spy)(
        {"id": "j", "input": {"task": "text-to-image", "items": [{"prompt": "x"}] * 50}}
    )
    while (await anext(stream))["type"] != "part":
        pass
    await asyncio.sleep(0.5)
    ahead = spy.generated
    assert ahead <= 5, f"generated {ahead} items while one was consumed"
    rest = await collect(stream)
    assert spy.generated == 50
    assert rest[-1]["type"] == "manifest"


async def test_cancellation_stops_at_the_next_step_and_reraises(tiny: Model) -> None:
    spy = Spy(tiny)
    steps = 400
    job = {
        "id": "j-cancel",
        "input": {
            "task": "image-to-video",
            "items": [{"image": png_base64()}] * 3,
            "params": {"steps": steps},
        },
    }
    seen: list[dict[str, Any]] = []

    async def consume() -> None:
        async for envelope in make_handler(spy)(job):
            seen.append(envelope)

    task = asyncio.create_task(consume())
    deadline = time.monotonic() + 60
    while not (spy.ctx and spy.ctx.steps_taken >= 2):
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.02)
    task.cancel()
    at_cancel = spy.ctx.steps_taken
    with pytest.raises(asyncio.CancelledError):
        await task
    # The handler waited for the generation thread: it is over, one step after the cancel at most.
    assert not spy.running
    assert spy.ctx.steps_taken <= at_cancel + 2 < steps
    assert spy.generated == 0
    assert spy.released == 1
    assert all(e["type"] == "progress" for e in seen)


async def test_closing_the_generator_early_stops_generation() -> None:
    # When the SDK's task is cancelled during a POST, the generator is closed at its yield instead.
    spy = Spy(SleepModel(2.0, 10, steps=200))
    stream = make_handler(spy, HandlerConfig(progress_interval_s=0.05))(
        {"id": "j", "input": {"task": "text-to-image", "items": [{"prompt": "x"}] * 3}}
    )
    first = await anext(stream)
    assert first["type"] == "progress"
    started = time.monotonic()
    await stream.aclose()
    assert time.monotonic() - started < 1.5
    assert not spy.running and spy.generated == 0
    assert spy.released == 1


# ---- custom inputs, several outputs per item, seeds, size rules, custom task names


def seeded(request: Request, ctx: Context) -> Result:
    """A file that depends only on the request's seed and prompt (so a reported seed reproduces it)."""
    ctx.step(1, 1)
    return File(f"{request.prompt}|{request.seed}|{request.output}".encode(), "text/plain")


def manifest_of(got: Any) -> list[dict[str, Any]]:
    assert got.assembler.manifest is not None
    return list(got.assembler.manifest.items)


async def test_num_images_makes_several_files_per_item_with_consecutive_seeds() -> None:
    model = FunctionModel(seeded, tasks={"text-to-image"})
    items = [{"prompt": "a", "seed": 10, "id": "first"}, {"prompt": ""}, {"prompt": "c"}]
    job = {"id": "j", "input": {"task": "text-to-image", "items": items, "params": {"num_images": 2}}}
    got = reassemble(await collect(make_handler(model)(job)), "j")
    assert got.problems == []
    assert sorted(got.assembler.completed) == [0, 1, 4, 5] and sorted(got.assembler.failed) == [2, 3]
    assert got.file(0) == b"a|10|0" and got.file(1) == b"a|11|1"
    assert got.assembler.failed[3].message.startswith("input.items[1].prompt: required")
    seeds = {e["item"]: e.get("seed") for e in manifest_of(got)}
    assert seeds[0] == 10 and seeds[1] == 11 and seeds[2] is None
    drawn = seeds[4]
    assert isinstance(drawn, int) and seeds[5] == drawn + 1  # a seed left out was drawn, and reported


async def test_a_seed_left_out_is_drawn_at_random_reported_and_reproduces_the_file() -> None:
    model = FunctionModel(seeded, tasks={"text-to-image"})
    job: dict[str, Any] = {"id": "j", "input": {"task": "text-to-image", "items": [{"prompt": "x"}] * 2}}
    first = reassemble(await collect(make_handler(model)(job)), "j")
    seeds = [e["seed"] for e in manifest_of(first)]
    assert all(isinstance(s, int) for s in seeds) and seeds[0] != seeds[1]
    again = {"id": "j", "input": {"task": "text-to-image", "items": [{"prompt": "x", "seed": seeds[1]}]}}
    second = reassemble(await collect(make_handler(model)(again)), "j")
    assert second.file(0) == first.file(1)


async def test_size_rules_are_checked_per_model() -> None:
    job = {
        "id": "j",
        "input": {"task": "text-to-image", "items": [{"prompt": "x"}], "params": {"width": 1001}},
    }
    with pytest.raises(
        JobInputError, match=r"input\.params\.width: must be a multiple of 8 for this model, got 1001"
    ):
        await collect(make_handler(FunctionModel(seeded, tasks={"text-to-image"}))(job))
    loose = FunctionModel(seeded, tasks={"text-to-image"}, size_multiple=1)
    assert reassemble(await collect(make_handler(loose)(job)), "j").problems == []
    with pytest.raises(ValueError, match="size_multiple must be at least 1"):
        FunctionModel(seeded, tasks={"x"}, size_multiple=0)


async def test_custom_task_names() -> None:
    def upscale(request: Request, ctx: Context) -> Result:
        return Image(PILImage.new("RGB", (8, 8), (1, 2, 3)))

    model = FunctionModel(upscale, tasks={"upscale"})
    job = {"id": "j", "input": {"task": "upscale", "items": [{"prompt": "x"}]}}
    got = reassemble(await collect(make_handler(model)(job)), "j")
    assert got.assembler.completed[0].mime == "image/png"  # no format asked: an image is a PNG
    with pytest.raises(JobInputError, match=r"input\.task: must be one of .*'upscale'"):
        await collect(
            make_handler(model)({"id": "j", "input": {"task": "upscal", "items": [{"prompt": "x"}]}})
        )


class Poster(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
    num_images: int = Field(1, ge=1, le=8)
    width: int = 64
    seed: int | None = None
    palette: Literal["warm", "cool"] = "warm"


async def test_a_custom_input_model_takes_a_seed_style_input() -> None:
    seen: list[Any] = []

    def poster(request: Request, ctx: Context) -> Result:
        seen.append(request.input)
        assert isinstance(request.input, Poster)
        return File(f"{request.input.palette}|{request.prompt}|{request.seed}".encode(), "text/plain")

    model = FunctionModel(poster, tasks={"poster"}, input_model=Poster)
    job = {"id": "j", "input": {"prompt": "a cat", "num_images": 3, "palette": "cool", "seed": 4}}
    got = reassemble(await collect(make_handler(model)(job)), "j")
    assert got.problems == [] and [got.file(k) for k in range(3)] == [
        b"cool|a cat|4", b"cool|a cat|5", b"cool|a cat|6"
    ]  # fmt: skip
    assert [e["seed"] for e in manifest_of(got)] == [4, 5, 6] and len(seen) == 3
    for bad, message in [
        ({"num_images": 3}, r"^input\.prompt: Field required$"),
        ({"prompt": "a", "palette": "red"}, r"^input\.palette: must be one of 'warm' or 'cool'$"),
        ({"prompt": "a", "width": 1001}, r"^input\.width: must be a multiple of 8 for this model, got 1001$"),
        ({"prompt": "a", "task": "text-to-image"}, r"^input\.task: unknown field$"),
    ]:
        with pytest.raises(JobInputError, match=message):
            await collect(make_handler(model)({"id": "j", "input": bad}))


async def test_files_are_hashed_in_the_encode_thread_not_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    # The loop sends the parts (the SDK's POSTs run on it): a hash there would stall every send.
    import threading

    hashed_on: list[str] = []
    real = wire.sha256_hex

    def spy(data: bytes) -> str:
        hashed_on.append(threading.current_thread().name)
        return real(data)

    monkeypatch.setattr(wire, "sha256_hex", spy)
    job = {"id": "job-hash", "input": {"task": "text-to-video", "items": [{"prompt": "x"}] * 3}}
    envelopes = await collect(make_handler(SleepModel(0, 300_000))(job))
    assert len(hashed_on) == 3 and threading.main_thread().name not in hashed_on
    monkeypatch.undo()  # the test's own assembler hashes what it checks
    got = reassemble(envelopes, "job-hash")
    assert got.problems == [] and sorted(got.assembler.completed) == [0, 1, 2]


def image_size(request: Request, ctx: Context) -> Result:
    """A file naming the size of the item's image: what the model was given."""
    assert request.image is not None
    return File(f"{request.image.width}x{request.image.height}".encode(), "text/plain")


async def test_an_image_that_does_not_match_its_sha256_fails_alone() -> None:
    inline = png_base64(40, 30)
    inline_sha = hashlib.sha256(base64.b64decode(inline)).hexdigest()
    served_sha = hashlib.sha256(SERVED_PNG).hexdigest()
    with serve_images() as server:
        listed = HandlerConfig(limits=Limits(input_hosts=(server.removeprefix("http://"),)))
        items = [
            {"id": "inline", "image": inline, "image_sha256": inline_sha},
            {"id": "inline-other", "image": inline, "image_sha256": served_sha},
            {"id": "fetched", "image": f"{server}/ok.png", "image_sha256": served_sha},
            {"id": "fetched-other", "image": f"{server}/ok.png", "image_sha256": inline_sha},
            {"id": "unchecked", "image": f"data:image/png;base64,{inline}"},
        ]
        job = {"id": "j", "input": {"task": "image-to-video", "items": items, "params": {"batch_size": 2}}}
        model = FunctionModel(image_size, tasks={"image-to-video"})
        got = reassemble(await collect(make_handler(model, listed)(job)), "j")
    assert got.problems == []
    assert {i: got.file(i) for i in got.assembler.completed} == {0: b"40x30", 2: b"24x16", 4: b"40x30"}
    failed = got.assembler.failed
    assert {i: (failed[i].id, failed[i].code) for i in failed} == {
        1: ("inline-other", "image_sha256_mismatch"),
        3: ("fetched-other", "image_sha256_mismatch"),
    }
    assert failed[3].message == (
        f"input.items[3].image: the image's bytes hash to sha256 {served_sha[:12]}..., the item's "
        f"image_sha256 is {inline_sha[:12]}...: not the image the job names (changed or replaced since it was given)"
    )
    assert [m["status"] for m in manifest_of(got)] == ["ok", "error", "ok", "error", "ok"]


async def test_the_handler_reads_its_limits_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODSTREAM_MAX_ITEMS", "1")
    assert HandlerConfig().limits.max_items == 1
    job = {"id": "j", "input": {"task": "text-to-image", "items": [{"prompt": "a"}, {"prompt": "b"}]}}
    model = FunctionModel(seeded, tasks={"text-to-image"})
    with pytest.raises(JobInputError, match=r"^input\.items: 2 items, at most 1 per job$"):
        await collect(make_handler(model)(job))
    with serve_images() as server:
        url = f"{server}/ok.png"
        refused = {"id": "j", "input": {"task": "image-to-video", "items": [{"image": url}]}}
        image_model = FunctionModel(image_size, tasks={"image-to-video"})
        got = reassemble(await collect(make_handler(image_model)(refused)), "j")
        assert got.assembler.failed[0].code == "url_refused"
        monkeypatch.setenv("PODSTREAM_INPUT_HOSTS", server.removeprefix("http://"))
        got = reassemble(await collect(make_handler(image_model)(refused)), "j")
        assert got.file(0) == b"24x16"
    monkeypatch.setenv("PODSTREAM_INPUT_HOSTS", "http://relay")
    with pytest.raises(ValueError, match=r"^PODSTREAM_INPUT_HOSTS='http://relay' is not a list"):
        make_handler(model)
