"""Bring your own model: the small API every model behind the worker implements, diffusers or not.

A model turns a batch of `Request`s into one `Result` per request:

- `Video(frames, fps=None)`: frames (PIL images or arrays) that the worker encodes as MP4/WebM;
- `Image(image)`: one picture that the worker encodes as PNG/WebP/JPEG;
- `File(data, mime)`: bytes the model already encoded itself (any mime type), streamed as they are;
- or an exception instance: that item fails with an `error` envelope, the batch goes on.

The simplest model is one function, `def generate(request, ctx) -> Result`, handed to `podstream.serve`
(the public names of this API are on `podstream`, see podstream/__init__.py):

    import podstream

    def generate(request: podstream.Request, ctx: podstream.Context) -> podstream.Result:
        for step in range(20):
            ctx.step(step + 1, 20)  # progress, and raises Cancelled if the job was cancelled
            ...
        return podstream.Video(frames, fps=8)

    podstream.serve(generate, tasks={"image-to-video"})

`generate` runs in a worker thread (never on the event loop), one call at a time, while the previous
item's file is encoded and streamed; `ctx.step` is the only thing it needs to call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

if TYPE_CHECKING:
    from PIL import Image as PILImage
    from pydantic import BaseModel

    from podstream.jobspec import Params


@dataclass(frozen=True)
class Video:
    frames: Any  # a sequence of PIL images / (H, W, C) arrays, or one (T, H, W, C) array
    fps: float | None = None  # None: the job's `params.fps`


@dataclass(frozen=True)
class Image:
    image: Any  # a PIL image or an (H, W, C) array


@dataclass(frozen=True)
class File:
    data: bytes
    mime: str
    meta: Mapping[str, Any] = field(default_factory=dict)


Result: TypeAlias = Video | Image | File


@dataclass(frozen=True)
class Request:
    """One item to generate: its index in the job, client id, prompt/image/seed, and the job's params."""

    index: int
    id: str
    task: str
    params: Params
    prompt: str | None = None
    negative_prompt: str | None = None
    image: PILImage.Image | None = None
    seed: int | None = None  # always set by the handler: drawn at random when the input had none
    input: Any = None  # the model's own input (an `input_model` instance), when it declares one
    output: int = 0  # which of the item's `num_images` outputs this is (its seed is the item's + output)


class Cancelled(Exception):
    """Raised inside a model (by `Context.step`) when its job was cancelled: stop and unwind."""


class Context:
    """What a running model sees of its job: progress reporting and cancellation.

    Thread-safe: `step` is called from the generation thread; `cancel` from the event loop. Progress
    leaves the generation thread only through `on_progress`, which the handler wires to the loop.
    """

    def __init__(self, on_progress: Callable[[Sequence[int], int, int], None] | None = None) -> None:
        self._cancelled = threading.Event()
        self._on_progress = on_progress
        self.items: Sequence[int] = ()  # indexes of the batch now generating
        self.steps_taken = 0  # steps reported since the job started (for tests and logs)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    def check(self) -> None:
        """Raise `Cancelled` if the job was cancelled."""
        if self._cancelled.is_set():
            raise Cancelled("the job was cancelled")

    def step(self, step: int, steps: int) -> None:
        """Report that `step` of `steps` is done for the current batch; raises `Cancelled` if cancelled."""
        self.check()
        self.steps_taken += 1
        if self._on_progress is not None:
            self._on_progress(self.items, max(0, min(step, steps)), max(steps, 0))

    def diffusers_callback(self, steps: int) -> Callable[..., dict[str, Any]]:
        """A `callback_on_step_end` for diffusers pipelines: progress after each step, stop when cancelled.

        It raises `Cancelled` rather than setting the pipeline's `_interrupt`: an interrupted diffusers
        pipeline still VAE-decodes every frame, which for a video can cost more than the steps left.
        """

        def callback(pipe: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            self.step(i + 1, steps)
            return kwargs

        return callback


@runtime_checkable
class Model(Protocol):
    """A loaded model. `generate` is called from one thread at a time; `release` frees memory after a
    cancelled or failed batch (e.g. `torch.cuda.empty_cache()`)."""

    tasks: frozenset[str]

    def generate(self, batch: Sequence[Request], ctx: Context) -> Sequence[Result | BaseException]: ...

    def release(self) -> None: ...


GenerateFn: TypeAlias = Callable[[Request, Context], Result]


class FunctionModel:
    """A `Model` from a per-item function; an exception from it fails that item only.

    `input_model`: the pydantic model of the job input, when the function takes its own (`Request.input`).
    `size_multiple`: width and height must be multiples of it (8, a VAE's scale factor, by default)."""

    def __init__(
        self,
        generate: GenerateFn,
        tasks: Iterable[str],
        *,
        input_model: type[BaseModel] | None = None,
        size_multiple: int = 8,
    ) -> None:
        if size_multiple < 1:
            raise ValueError("size_multiple must be at least 1")
        self._generate = generate
        self.tasks = frozenset(tasks)
        self.input_model = input_model
        self.size_multiple = size_multiple

    def check(self, task: str, params: Params) -> None:
        """The model's size rule, checked before anything is generated (raises ValueError)."""
        check_sizes(params, self.size_multiple, "input" if self.input_model is not None else "input.params")

    def generate(self, batch: Sequence[Request], ctx: Context) -> Sequence[Result | BaseException]:
        results: list[Result | BaseException] = []
        for request in batch:
            ctx.items = (request.index,)
            try:
                results.append(self._generate(request, ctx))
            except Cancelled:
                raise
            except Exception as exc:
                results.append(exc)
        return results

    def release(self) -> None:
        pass


def check_sizes(params: Params, multiple: int, prefix: str = "input.params") -> None:
    """Refuse a width or height that is not a multiple of `multiple`, naming the field."""
    for side in ("width", "height"):
        value = getattr(params, side)
        if value is not None and value % multiple:
            raise ValueError(f"{prefix}.{side}: must be a multiple of {multiple} for this model, got {value}")


class Models:
    """Several models behind one worker, each job routed to the (first listed) model doing its task."""

    def __init__(self, *models: Model) -> None:
        self.by_task: dict[str, Model] = {}
        for model in models:  # the first model listed for a task does it
            for task in model.tasks:
                self.by_task.setdefault(task, model)
        self.tasks = frozenset(self.by_task)

    def check(self, task: str, params: Params) -> None:
        check = getattr(self.by_task[task], "check", None)
        if check is not None:
            check(task, params)

    def generate(self, batch: Sequence[Request], ctx: Context) -> Sequence[Result | BaseException]:
        return self.by_task[batch[0].task].generate(batch, ctx)

    def release(self) -> None:
        for model in {id(m): m for m in self.by_task.values()}.values():
            model.release()


class SleepModel:
    """A model whose generation time is controlled: `seconds` per item, reported over `steps` steps.

    Returns a `File` of `size` pseudo-random bytes (incompressible, like encoded video). Used by the
    overlap and memory benchmarks and by tests of the streaming machinery; not a toy for users.
    """

    def __init__(self, seconds: float, size: int, *, steps: int = 4, mime: str = "video/mp4") -> None:
        self.tasks = frozenset({"image-to-video", "text-to-image", "text-to-video"})
        self.seconds, self.size, self.steps, self.mime = seconds, size, steps, mime
        # Made here, as a real model is loaded before its first job: made in the first `generate` it held
        # the GIL for about 12 ms per MB inside that item's `seconds`, past the generation time it claims.
        self._base = self._random(size)

    def generate(self, batch: Sequence[Request], ctx: Context) -> Sequence[Result | BaseException]:
        results: list[Result | BaseException] = []
        for request in batch:
            ctx.items = (request.index,)
            # `seconds` is the whole item, making its bytes included: each step sleeps until its deadline,
            # as a GPU-bound step ends on the GPU's clock however late its Python thread wakes.
            began = time.monotonic()
            data = self._bytes(request.seed if request.seed is not None else request.index)
            for step in range(self.steps):
                time.sleep(max(0.0, began + self.seconds * (step + 1) / self.steps - time.monotonic()))
                ctx.step(step + 1, self.steps)
            results.append(File(data, self.mime))
        return results

    @staticmethod
    def _random(size: int) -> bytes:
        import random

        return random.Random(0).randbytes(size)

    def _bytes(self, seed: int) -> bytes:
        """`size` incompressible bytes, the same for the same seed. One random buffer is made once and
        each seed gets its own rotation of it: a copy, where `randbytes` would hold the GIL for about
        12 ms per MB on every item (slower than encoding and sending it, which the overlap bench
        measures)."""
        import random

        if not self.size:
            return b""
        k = random.Random(seed).randrange(self.size)
        view = memoryview(self._base)
        return b"".join((view[k:], view[:k]))

    def release(self) -> None:
        pass
