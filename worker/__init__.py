"""The podstream worker: a RunPod async-generator handler that streams every generated file.

Bring your own handler (worker/wrapper.py): `runpod.serverless.start({"handler": podstream.wrap(handler)})`
streams the files of an existing RunPod handler's result. Bring your own model (see worker/model.py and
docs/worker.md):

    import podstream

    def generate(request: podstream.Request, ctx: podstream.Context) -> podstream.Result:
        ...
        return podstream.Video(frames, fps=8)

    podstream.serve(generate, tasks={"image-to-video"})

`podstream` exports these names from here (finding this package even where a user's own `worker.py` would
shadow `import worker`).

`import worker` imports nothing itself (so `python -m worker.volume` can run before any dependency is
installed); the names below load their module on first use. torch, diffusers and PyAV are imported only
by the pipelines and encoders.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from podstream.jobspec import JobInputError, Limits
    from worker.handler import HandlerConfig, make_handler
    from worker.model import (
        Cancelled,
        Context,
        File,
        FunctionModel,
        Image,
        Model,
        Models,
        Request,
        Result,
        Video,
    )
    from worker.start import NotOnRunPod, run_once, serve
    from worker.wrapper import WrapConfig, wrap

_EXPORTS = {
    "HandlerConfig": "worker.handler",
    "make_handler": "worker.handler",
    "JobInputError": "podstream.jobspec",
    "Limits": "podstream.jobspec",
    "Cancelled": "worker.model",
    "Context": "worker.model",
    "File": "worker.model",
    "FunctionModel": "worker.model",
    "Image": "worker.model",
    "Model": "worker.model",
    "Models": "worker.model",
    "Request": "worker.model",
    "Result": "worker.model",
    "Video": "worker.model",
    "NotOnRunPod": "worker.start",
    "run_once": "worker.start",
    "serve": "worker.start",
    "WrapConfig": "worker.wrapper",
    "wrap": "worker.wrapper",
}
__all__ = [
    "Cancelled",
    "Context",
    "File",
    "FunctionModel",
    "HandlerConfig",
    "Image",
    "JobInputError",
    "Limits",
    "Model",
    "Models",
    "NotOnRunPod",
    "Request",
    "Result",
    "Video",
    "WrapConfig",
    "make_handler",
    "run_once",
    "serve",
    "wrap",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'worker' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
