from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from podstream.jobspec import Params
from worker.model import Cancelled, Context, File, FunctionModel, Model, Models, Request, Result, SleepModel


def request(index: int = 0, task: str = "text-to-image", prompt: str = "x") -> Request:
    return Request(index, f"id-{index}", task, Params(), prompt=prompt)


def test_context_reports_progress_and_raises_once_cancelled() -> None:
    seen: list[tuple[Sequence[int], int, int]] = []
    ctx = Context(lambda items, step, steps: seen.append((items, step, steps)))
    ctx.items = (3,)
    ctx.step(1, 4)
    ctx.step(9, 4)  # clamped
    assert seen == [((3,), 1, 4), ((3,), 4, 4)]
    callback = ctx.diffusers_callback(10)
    assert callback(None, 0, None, {"latents": 1}) == {"latents": 1}
    assert seen[-1] == ((3,), 1, 10)
    ctx.cancel()
    assert ctx.cancelled
    with pytest.raises(Cancelled):
        ctx.step(2, 4)
    with pytest.raises(Cancelled):
        callback(None, 1, None, {})
    assert ctx.steps_taken == 3


def test_function_model_fails_items_alone_but_lets_cancellation_through() -> None:
    def generate(r: Request, ctx: Context) -> Result:
        if r.prompt == "bad":
            raise ValueError("nope")
        if r.prompt == "stop":
            raise Cancelled("stop")
        return File(r.id.encode(), "text/plain")

    model = FunctionModel(generate, ["text-to-image"])
    assert isinstance(model, Model)
    results = model.generate([request(0), request(1, prompt="bad"), request(2)], Context())
    assert results[0] == File(b"id-0", "text/plain")
    assert isinstance(results[1], ValueError)
    assert results[2] == File(b"id-2", "text/plain")
    with pytest.raises(Cancelled):
        model.generate([request(prompt="stop")], Context())


def test_models_route_by_task() -> None:
    images = FunctionModel(lambda r, c: File(b"i", "image/png"), ["text-to-image"])
    videos = SleepModel(0, 3, steps=1)
    both = Models(images, videos)
    assert both.tasks == {"text-to-image", "image-to-video", "text-to-video"}
    assert both.generate([request(task="text-to-image")], Context()) == [
        File(b"i", "image/png")
    ]  # the first listed
    [clip] = both.generate([request(task="image-to-video")], Context())
    assert isinstance(clip, File) and len(clip.data) == 3
    both.check("text-to-image", Params())
    both.release()


def test_sleep_model_is_deterministic_per_seed() -> None:
    model = SleepModel(0, 64, steps=2)
    a = model.generate([Request(0, "", "text-to-image", Params(), seed=1)], Context())
    b = model.generate([Request(5, "", "text-to-image", Params(), seed=1)], Context())
    assert a == b
    [c] = model.generate([Request(0, "", "text-to-image", Params(), seed=2)], Context())
    [d] = SleepModel(0, 64, steps=2).generate([Request(0, "", "text-to-image", Params(), seed=2)], Context())
    assert isinstance(c, File) and len(c.data) == 64 and c != a[0] and c == d


def test_sleep_model_takes_its_seconds_per_item_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    # `seconds` covers making the bytes too: the steps sleep to deadlines, never a fixed share each.
    slept: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        real_sleep(seconds)

    monkeypatch.setattr(time, "sleep", sleep)
    steps: list[int] = []
    began = time.monotonic()
    SleepModel(0.1, 4_000_000, steps=5).generate(
        [Request(i, "", "text-to-video", Params()) for i in range(3)],
        Context(lambda _i, s, _n: steps.append(s)),
    )
    assert steps == [1, 2, 3, 4, 5] * 3 and len(slept) == 15
    assert time.monotonic() - began >= 0.3 and sum(slept) < 0.3  # the bytes took some of it
