"""podstream: stream large GPU outputs from RunPod serverless workers to their users.

`import podstream` is light: it never imports torch (the worker extra is only needed by `worker`), and the
client API is imported on first use:

    podstream.pull(job, runpod_url=..., key=..., out=...)   # drain RunPod's /stream directly (no relay)
    podstream.watch(job, relay=..., out=..., token=...)     # follow a job on a relay over its websocket
    podstream.apull(...), podstream.awatch(...)             # the same for asyncio programs

They live in `podstream.puller` and `podstream.watcher` (with their options: `RetryPolicy`, ...).
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from podstream.puller import apull, pull
    from podstream.watcher import awatch, watch

_LAZY = {
    "pull": "podstream.puller",
    "apull": "podstream.puller",
    "watch": "podstream.watcher",
    "awatch": "podstream.watcher",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'podstream' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), name)


__all__ = ["__version__", "apull", "awatch", "pull", "watch"]
