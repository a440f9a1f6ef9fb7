"""podstream: stream large GPU outputs from RunPod serverless workers to their users.

`import podstream` is light: it never imports torch (the worker extra is only needed by `worker`), and
every name below is imported on first use.

The client API:

    podstream.pull(job, runpod_url=..., key=..., out=...)   # drain RunPod's /stream directly (no relay)
    podstream.watch(job, relay=..., out=..., token=...)     # follow a job on a relay over its websocket
    podstream.save(job.stream(), out=..., job=job)          # the runpod SDK's own stream (runpod.Endpoint)
    podstream.apull(...), podstream.awatch(...), podstream.asave(...)   # the same for asyncio programs

They live in `podstream.puller`, `podstream.watcher` and `podstream.sdk` (with their options:
`RetryPolicy`, ...).

The worker API (the `worker` package, docs/worker.md):

    runpod.serverless.start({"handler": podstream.wrap(handler), "return_aggregate_stream": False})
    podstream.serve(generate, tasks={"image-to-video"})     # bring your own model: Request, Context,
                                                            # Result, Image, Video, File, Model, ...

These are the worker package installed beside podstream even where a handler script of your own is named
`worker.py`, or sits next to one, which `import worker` would pick up instead.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from podstream.puller import apull, pull
    from podstream.sdk import asave, save
    from podstream.watcher import awatch, watch
    from worker.model import Cancelled, Context, File, Image, Model, Models, Request, Result, Video
    from worker.start import run_once, serve
    from worker.wrapper import WrapConfig, wrap

_LAZY = {
    "pull": "podstream.puller",
    "apull": "podstream.puller",
    "watch": "podstream.watcher",
    "awatch": "podstream.watcher",
    "save": "podstream.sdk",
    "asave": "podstream.sdk",
}
#: The worker API: name -> its module in the worker package.
_WORKER_API = {
    "wrap": "wrapper",
    "WrapConfig": "wrapper",
    "serve": "start",
    "run_once": "start",
    **dict.fromkeys(
        ("Cancelled", "Context", "File", "Image", "Model", "Models", "Request", "Result", "Video"), "model"
    ),
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is not None:
        return getattr(importlib.import_module(module_name), name)
    submodule = _WORKER_API.get(name)
    if submodule is not None:
        return getattr(_worker_module(submodule), name)
    raise AttributeError(f"module 'podstream' has no attribute {name!r}")


def _worker_module(name: str) -> ModuleType:
    """`worker.<name>`, from the worker package beside this one: imported from its own directory when
    `import worker` would find another module first (a `worker.py` on sys.path)."""
    init = Path(__file__).resolve().parent.parent / "worker" / "__init__.py"
    if init.is_file():  # installed side by side: a wheel, a checkout, the images
        loaded = sys.modules.get("worker")
        if loaded is None:
            found = importlib.util.find_spec("worker")
            if _resolved(found.origin if found is not None else None) != init:
                _import_package("worker", init)
        elif _resolved(getattr(loaded, "__file__", None)) != init:
            raise ImportError(
                f"podstream's worker package is hidden by {getattr(loaded, '__file__', None) or loaded}, "
                "imported as 'worker': rename that module"
            )
    return importlib.import_module(f"worker.{name}")


def _resolved(path: str | None) -> Path | None:
    return Path(path).resolve() if path else None


def _import_package(name: str, init: Path) -> None:
    """Import the package whose `__init__.py` is `init` as `name`, wherever sys.path would look first."""
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(init.parent)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


__all__ = [
    "Cancelled",
    "Context",
    "File",
    "Image",
    "Model",
    "Models",
    "Request",
    "Result",
    "Video",
    "WrapConfig",
    "__version__",
    "apull",
    "asave",
    "awatch",
    "pull",
    "run_once",
    "save",
    "serve",
    "watch",
    "wrap",
]
