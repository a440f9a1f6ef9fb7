"""worker.allocator: one glibc arena for the whole process, counted from glibc's own malloc_info report."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's arenas only"
)

# Four threads each hold a buffer while the others allocate theirs (a barrier), as a job's stages do, then
# glibc's malloc_info lists one <heap> per arena in use.
_PROBE = """
import ctypes, json, sys, threading
from pathlib import Path
if sys.argv[1] == "handler":
    from worker.handler import make_handler
    from worker.model import SleepModel
    make_handler(SleepModel(0.0, 1000))
elif sys.argv[1] == "wrap":
    from worker.wrapper import wrap
    wrap(lambda job: {})
elif sys.argv[1] == "twice":
    from worker import allocator
    first = allocator.limit_arenas()
    assert allocator.limit_arenas() == first
barrier = threading.Barrier(4)
held = []
def work():
    held.append(bytearray(300_000))
    barrier.wait()
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
report = sys.argv[2]
fp = libc.fopen(report.encode(), b"w")
libc.malloc_info(0, fp)
libc.fclose(fp)
print(json.dumps({"heaps": Path(report).read_text().count("<heap nr=")}))
"""


def _heaps(mode: str, tmp_path: Path, **env: str) -> int:
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode, str(tmp_path / f"{mode}.xml")],
        capture_output=True, text=True, env=environ, timeout=120, check=True,
    )  # fmt: skip
    heaps: int = json.loads(out.stdout.strip().splitlines()[-1])["heaps"]
    return heaps


def test_threads_get_arenas_of_their_own_without_the_cap(tmp_path: Path) -> None:
    assert _heaps("plain", tmp_path) > 1  # what the cap is for: glibc's default


def test_making_a_handler_caps_the_process_at_one_arena(tmp_path: Path) -> None:
    assert _heaps("handler", tmp_path) == 1


def test_wrapping_a_handler_caps_it_too(tmp_path: Path) -> None:
    assert _heaps("wrap", tmp_path) == 1


def test_a_second_call_answers_as_the_first(tmp_path: Path) -> None:
    assert _heaps("twice", tmp_path) == 1


def test_the_operators_malloc_arena_max_wins(tmp_path: Path) -> None:
    # glibc took MALLOC_ARENA_MAX=3 at start-up; the handler must not narrow it to 1.
    assert _heaps("handler", tmp_path, MALLOC_ARENA_MAX="3") == 3


def test_it_says_whether_the_cap_is_in_force(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import allocator

    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert allocator.limit_arenas() is False  # left to the operator
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert allocator.limit_arenas() is True
