"""Text-to-image with Stable Diffusion XL (`stabilityai/stable-diffusion-xl-base-1.0`).

The same adapter drives Stable Diffusion 1.x/2.x pipelines (the tiny default uses it): they take the
same arguments. One call makes a batch of prompts, each with its own seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.model import Request, Result
from worker.pipelines.diffusion import Defaults, DiffusersModel, device, dtype, images, load_pipeline

REPO = "stabilityai/stable-diffusion-xl-base-1.0"


class TextToImageModel(DiffusersModel):
    task = "text-to-image"
    defaults = Defaults(width=1024, height=1024, steps=30, guidance=5.0)

    def arguments(self, batch: Sequence[Request]) -> dict[str, Any]:
        first = batch[0]
        width, height = self.size(first)
        return {
            "prompt": [r.prompt or "" for r in batch],
            "negative_prompt": [r.negative_prompt or "" for r in batch],
            "height": height,
            "width": width,
            "num_inference_steps": self.steps(first),
            "guidance_scale": self.guidance(first),
            "generator": self.generators(batch),
        }

    def results(self, output: Any, batch: Sequence[Request]) -> list[Result]:
        return images(output.images, batch)


def load(source: str = REPO) -> TextToImageModel:
    from diffusers import StableDiffusionXLPipeline

    on = device()
    pipe = load_pipeline(StableDiffusionXLPipeline, source, torch_dtype=dtype(on))
    return TextToImageModel(pipe, on=on)
