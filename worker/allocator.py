"""The worker's one process-wide allocator setting: a single glibc malloc arena.

Why: a job's stages run in threads (prepare, generate, encode, and the SDK's POSTs on the loop) that each
allocate whole files (an 8 MB MP4, its base64 parts) and free them on another thread. glibc gives every new
thread an arena of its own, and after the first large free it raises its mmap threshold, so those buffers
come from several per-thread heaps that fragment. `bench.worker_memory` measured the result with 8 MB
files: peak RSS 114 MiB at 50 items and 131 MiB at 1000 (1.147, against a target of 1.10). With one arena
the same runs peak at about 92 MiB, flat in the number of items, and no slower (docs/worker.md).

An operator's own `MALLOC_ARENA_MAX` wins: glibc read it at start-up, and this module leaves it alone.
Off glibc (musl, macOS) there is nothing to set and `limit_arenas` says so.
"""

from __future__ import annotations

import ctypes
import os
import threading

M_ARENA_MAX = -8  # glibc's <malloc.h>

_lock = threading.Lock()
_applied: bool | None = None  # once per process: the answer of the first call


def limit_arenas(count: int = 1) -> bool:
    """Cap glibc's malloc arenas at `count` for this process; True if the cap is in force.

    Called when a handler is made (`worker.handler.make_handler`, `worker.wrapper.wrap`), before the job's
    threads exist: threads that already have an arena keep it, later ones share the capped set.
    """
    global _applied
    with _lock:
        if _applied is None:
            _applied = _apply(count)
        return _applied


def _apply(count: int) -> bool:
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False  # the operator's choice, already in force
    try:
        libc = ctypes.CDLL(None)  # the running process's own symbols: libc is loaded already
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, count))  # glibc answers 1 on success; musl's stub answers 0
