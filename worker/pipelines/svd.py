"""Stable Video Diffusion (image-to-video): `stabilityai/stable-video-diffusion-img2vid(-xt)`.

One call animates a batch of input images; each item's image is resized to the requested size (the
pipeline conditions on it at that size). Motion settings map to the pipeline's own arguments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.model import Request, Result
from worker.pipelines.diffusion import Defaults, DiffusersModel, device, dtype, load_pipeline, videos

REPO = "stabilityai/stable-video-diffusion-img2vid-xt"


class SVDModel(DiffusersModel):
    task = "image-to-video"
    defaults = Defaults(width=1024, height=576, steps=25, guidance=3.0, frames=25, fps=7.0)

    def arguments(self, batch: Sequence[Request]) -> dict[str, Any]:
        first = batch[0]
        p = first.params
        width, height = self.size(first)
        frames = self.frames(first)
        max_guidance = p.max_guidance if p.max_guidance is not None else self.guidance(first)
        pictures = []
        for request in batch:
            if request.image is None:
                raise ValueError("image-to-video needs an image")
            pictures.append(request.image.resize((width, height)))
        return {
            "image": pictures,
            "height": height,
            "width": width,
            "num_frames": frames,
            "num_inference_steps": self.steps(first),
            "min_guidance_scale": p.min_guidance if p.min_guidance is not None else 1.0,
            "max_guidance_scale": max_guidance,
            "fps": round(p.fps or self.defaults.fps),
            "motion_bucket_id": p.motion_bucket_id if p.motion_bucket_id is not None else 127,
            "noise_aug_strength": p.noise_aug_strength if p.noise_aug_strength is not None else 0.02,
            "decode_chunk_size": p.decode_chunk_size or min(frames, 8),
            "generator": self.generators(batch),
        }

    def results(self, output: Any, batch: Sequence[Request]) -> list[Result]:
        return videos(output.frames, batch, [r.params.fps or self.defaults.fps for r in batch])


def load(source: str = REPO) -> SVDModel:
    from diffusers import StableVideoDiffusionPipeline

    on = device()
    pipe = load_pipeline(StableVideoDiffusionPipeline, source, torch_dtype=dtype(on))
    return SVDModel(pipe, on=on)
