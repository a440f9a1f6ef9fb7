"""A model with its own job input: `{"prompt": "a red kite", "num_images": 3, "palette": "cool"}`.

`podstream.serve(generate, input_model=Sketch)` makes `Sketch` the whole job input: it is validated before
anything runs (a typo or a bad value fails the job with the field's name), handed to `generate` as
`request.input`, and published by `podstream schema --model examples/custom_input/sketch.py:Sketch`.
Fields named like the built-in params keep their meaning: `num_images` outputs per job (seeds `seed`,
`seed + 1`, ...), `width`/`height` checked against the model's size rule (multiples of 8), and a `seed`
left out is drawn at random and reported in the manifest.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

import podstream

PALETTES = {"warm": (255, 140, 40), "cool": (40, 140, 255)}


class Sketch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=500)
    num_images: int = Field(1, ge=1, le=8)
    width: int = Field(64, ge=8, le=1024)
    height: int = Field(64, ge=8, le=1024)
    palette: Literal["warm", "cool"] = "warm"
    seed: int | None = Field(None, ge=0)


def draw(sketch: Sketch, seed: int) -> np.ndarray:
    """A stand-in for a real model: tinted noise, determined by the prompt and the seed."""
    digest = hashlib.sha256(f"{sketch.prompt}/{seed}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    noise = rng.random((sketch.height, sketch.width, 1))
    tinted: np.ndarray = (noise * np.array(PALETTES[sketch.palette])).astype(np.uint8)
    return tinted


def generate(request: podstream.Request, ctx: podstream.Context) -> podstream.Result:
    sketch: Sketch = request.input
    assert request.seed is not None  # the worker draws one when the input has none
    ctx.step(1, 1)
    return podstream.Image(draw(sketch, request.seed))


if __name__ == "__main__":
    podstream.serve(generate, tasks={"sketch"}, input_model=Sketch)
