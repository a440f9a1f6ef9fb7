"""Text-to-video with LTX-Video (`Lightricks/LTX-Video`).

LTX wants width/height multiples of 32 and 8k+1 frames (the VAE compresses 32x spatially, 8x in time);
`check` rejects other values before the job starts rather than silently changing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.model import Request, Result
from worker.pipelines.diffusion import Defaults, DiffusersModel, device, dtype, load_pipeline, videos

REPO = "Lightricks/LTX-Video"


class LTXModel(DiffusersModel):
    task = "text-to-video"
    defaults = Defaults(
        width=704, height=480, steps=40, guidance=3.0, frames=121, fps=24.0, multiple=32, frames_rule="8k+1"
    )
    max_sequence_length = 128

    def arguments(self, batch: Sequence[Request]) -> dict[str, Any]:
        first = batch[0]
        width, height = self.size(first)
        return {
            "prompt": [r.prompt or "" for r in batch],
            "negative_prompt": [r.negative_prompt or "" for r in batch],
            "height": height,
            "width": width,
            "num_frames": self.frames(first),
            "frame_rate": first.params.fps or self.defaults.fps,
            "num_inference_steps": self.steps(first),
            "guidance_scale": self.guidance(first),
            "max_sequence_length": self.max_sequence_length,
            "generator": self.generators(batch),
        }

    def results(self, output: Any, batch: Sequence[Request]) -> list[Result]:
        return videos(output.frames, batch, [r.params.fps or self.defaults.fps for r in batch])


def load(source: str = REPO) -> LTXModel:
    from diffusers import LTXPipeline

    on = device()
    pipe = load_pipeline(LTXPipeline, source, torch_dtype=dtype(on, "bfloat16"))
    return LTXModel(pipe, on=on)
