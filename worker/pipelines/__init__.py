"""Model families, one self-contained file each, chosen by name (`PODSTREAM_MODEL`, default `tiny`).

| name   | task(s)                                        | weights (offline: a directory or the HF cache)   |
| ------ | ---------------------------------------------- | ------------------------------------------------ |
| `tiny` | image-to-video, text-to-image, text-to-video   | none: random weights built in code               |
| `svd`  | image-to-video                                 | stabilityai/stable-video-diffusion-img2vid-xt    |
| `sdxl` | text-to-image                                  | stabilityai/stable-diffusion-xl-base-1.0         |
| `ltx`  | text-to-video                                  | Lightricks/LTX-Video                             |

`PODSTREAM_MODEL_PATH` (a directory or a repo id) overrides the default weights of the chosen family.
Modules are imported only when loaded: torch and diffusers are never imported by `import worker`.
"""

from __future__ import annotations

import importlib
import os
from typing import Final

from worker.model import Model

FAMILIES: Final = {
    "tiny": "worker.pipelines.tiny",
    "svd": "worker.pipelines.svd",
    "sdxl": "worker.pipelines.sdxl",
    "ltx": "worker.pipelines.ltx",
}


class UnknownModel(ValueError):
    pass


def load_model(name: str | None = None, source: str | None = None) -> Model:
    """Load a family's model once (at process start, never per job)."""
    name = name or os.environ.get("PODSTREAM_MODEL") or "tiny"
    if name not in FAMILIES:
        raise UnknownModel(f"unknown model {name!r}; choose one of {', '.join(FAMILIES)}")
    module = importlib.import_module(FAMILIES[name])
    source = source or os.environ.get("PODSTREAM_MODEL_PATH") or None
    model: Model = module.load(source) if source else module.load()
    return model
