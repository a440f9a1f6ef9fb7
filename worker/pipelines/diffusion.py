"""What every diffusers family shares: device and dtype choice, offline loading, and the `Model` adapter.

A family file (`svd.py`, `sdxl.py`, `ltx.py`) subclasses `DiffusersModel` with the keyword arguments its
pipeline takes (`arguments`) and how to read its output (`results`); everything else is here: seeded
generators per item, progress and cancellation through `callback_on_step_end`, memory release.

Weights are never downloaded by a job or at start: `load_pipeline` reads a local directory or the Hugging
Face cache (`local_files_only=True`), and says clearly where it looked when the model is not there.
The cache is `HF_HUB_CACHE`, else `$HF_HOME/hub`, else, when a RunPod network volume is mounted,
`/runpod-volume/huggingface-cache/hub`, else huggingface_hub's default (`~/.cache/huggingface/hub`).
"""

from __future__ import annotations

import gc
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.model import Context, Image, Request, Result, Video

VOLUME = Path("/runpod-volume")


@dataclass(frozen=True)
class Defaults:
    """A family's settings when the job leaves them out, and the shape rules its pipeline needs."""

    width: int
    height: int
    steps: int
    guidance: float
    frames: int = 1
    fps: float = 7.0
    multiple: int = 8  # width and height must be multiples of this (the VAE's scale factor)
    frames_rule: str = ""  # "8k+1" for LTX-Video


class ModelNotFound(RuntimeError):
    """The weights are not in the local directory or HF cache the worker was pointed at."""


def device() -> str:
    import torch

    return os.environ.get("PODSTREAM_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def dtype(on: str, half: str = "float16") -> Any:
    """float16/bfloat16 on CUDA (`PODSTREAM_DTYPE` overrides), float32 elsewhere."""
    import torch

    name = os.environ.get("PODSTREAM_DTYPE") or (half if on.startswith("cuda") else "float32")
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"PODSTREAM_DTYPE={name!r} is not a torch dtype (float16, bfloat16, float32)")
    return value


def hf_cache_dir() -> str | None:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    if VOLUME.is_dir():
        return str(VOLUME / "huggingface-cache" / "hub")
    return None


def load_pipeline(cls: Any, source: str, *, torch_dtype: Any, variant: str | None = None) -> Any:
    """`cls.from_pretrained(source)` from a directory or the HF cache, offline; `ModelNotFound` otherwise."""
    variant = variant or os.environ.get("PODSTREAM_VARIANT") or None
    path = Path(source).expanduser()
    cache = hf_cache_dir()
    options: dict[str, Any] = {_dtype_argument(): torch_dtype, "variant": variant, "local_files_only": True}
    try:
        if path.is_dir():
            return cls.from_pretrained(str(path), **options)
        return cls.from_pretrained(source, cache_dir=cache, **options)
    except (OSError, ValueError) as exc:
        where = (
            f"directory {path}"
            if path.is_dir()
            else f"the Hugging Face cache at {cache or '~/.cache/huggingface/hub'}"
        )
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelNotFound(
            f"cannot load {cls.__name__} {source!r} from {where} (offline): {first}. "
            f"Put the model there first (e.g. `podstream prefetch {source}`), or point PODSTREAM_MODEL_PATH at it."
        ) from exc


def _dtype_argument() -> str:
    """diffusers 0.42 renamed `torch_dtype` to `dtype` (the old name warns); older releases know only the old."""
    from importlib.metadata import version

    major, minor = (int(x) for x in version("diffusers").split(".")[:2])
    return "dtype" if (major, minor) >= (0, 42) else "torch_dtype"


class DiffusersModel:
    """A `worker.model.Model` over one diffusers pipeline doing one task."""

    task = ""
    defaults = Defaults(width=512, height=512, steps=25, guidance=7.0)

    def __init__(self, pipe: Any, *, on: str | None = None, defaults: Defaults | None = None) -> None:
        self.device = on or device()
        self.pipe = pipe
        if defaults is not None:
            self.defaults = defaults
        self.tasks = frozenset({self.task})
        pipe.set_progress_bar_config(disable=True)
        if os.environ.get("PODSTREAM_CPU_OFFLOAD") == "1" and self.device.startswith("cuda"):
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(self.device)

    # ---- what a family defines

    def arguments(self, batch: Sequence[Request]) -> dict[str, Any]:
        raise NotImplementedError

    def results(self, output: Any, batch: Sequence[Request]) -> list[Result]:
        raise NotImplementedError

    # ---- shared

    def check(self, task: str, params: Any) -> None:
        """Reject params this pipeline cannot run (raises ValueError with the reason)."""
        d = self.defaults
        for side in ("width", "height"):
            value = getattr(params, side)
            if value is not None and value % d.multiple:
                raise ValueError(
                    f"input.params.{side}: must be a multiple of {d.multiple} for this model, got {value}"
                )
        if d.frames_rule == "8k+1" and params.frames is not None and params.frames % 8 != 1:
            raise ValueError(
                f"input.params.frames: must be 8k+1 (9, 17, ..., 121) for this model, got {params.frames}"
            )

    def size(self, request: Request) -> tuple[int, int]:
        p = request.params
        return (p.width or self.defaults.width, p.height or self.defaults.height)

    def steps(self, request: Request) -> int:
        return request.params.steps or self.defaults.steps

    def guidance(self, request: Request) -> float:
        value = request.params.guidance
        return self.defaults.guidance if value is None else value

    def frames(self, request: Request) -> int:
        return request.params.frames or self.defaults.frames

    def generators(self, batch: Sequence[Request]) -> list[Any]:
        """One CPU generator per item (reproducible across GPU types), seeded by the item or at random."""
        import torch

        seeds = [r.seed if r.seed is not None else secrets.randbits(63) for r in batch]
        return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]

    def generate(self, batch: Sequence[Request], ctx: Context) -> Sequence[Result | BaseException]:
        import torch

        kwargs = self.arguments(batch)
        with torch.inference_mode():
            output = self.pipe(
                **kwargs,
                output_type="np",
                callback_on_step_end=ctx.diffusers_callback(kwargs["num_inference_steps"]),
            )
        return self.results(output, batch)

    def release(self) -> None:
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


def videos(frames: Any, batch: Sequence[Request], fps: Sequence[float]) -> list[Result]:
    """`output.frames` of a video pipeline (B, T, H, W, C) as one `Video` per request."""
    return [Video(frames[i], fps=fps[i]) for i in range(len(batch))]


def images(pictures: Any, batch: Sequence[Request]) -> list[Result]:
    return [Image(pictures[i]) for i in range(len(batch))]
