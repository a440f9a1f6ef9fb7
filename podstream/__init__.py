"""podstream: stream large GPU outputs from RunPod serverless workers to their users.

`import podstream` is light: it never imports torch (the worker extra is only needed by `worker`), and the
client API is imported on first use:

    podstream.pull(job, runpod_url=..., key=..., out=...)   # drain RunPod's /stream directly (no relay)
    podstream.watch(job, relay=..., out=..., token=...)     # follow a job on a relay over its websocket
    podstream.apull(...), podstream.awatch(...)             # the same for asyncio programs

`podstream.pull` and `podstream.watch` are also the modules of those names (`podstream.pull.RetryPolicy`);
calling the module calls its function.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from podstream.pull import apull, pull
    from podstream.watch import awatch, watch

_LAZY = {
    "pull": "podstream.pull",
    "apull": "podstream.pull",
    "watch": "podstream.watch",
    "awatch": "podstream.watch",
}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'podstream' has no attribute {name!r}")
    import importlib

    module = importlib.import_module(module_name)
    return module if name in ("pull", "watch") else getattr(module, name)


__all__ = ["__version__", "apull", "awatch", "pull", "watch"]
