"""bench/_relay_stack.py: waiting for a server fails at once, with its output, when the server has exited."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench._relay_stack import free_port, wait_healthy

DIES = "import sys; print('no such setting: PODSTREAM_X', file=sys.stderr); sys.exit(3)"


async def test_a_server_that_exited_fails_the_wait_at_once_with_what_it_wrote() -> None:
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", DIES, stderr=asyncio.subprocess.PIPE)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"exited \(3\)[\s\S]*no such setting: PODSTREAM_X"):
        await wait_healthy(f"http://127.0.0.1:{free_port()}", timeout_s=60, process=process)
    assert time.monotonic() - started < 30  # not the timeout


def test_a_popen_server_and_its_log_file(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-c", DIES], stdout=out, stderr=subprocess.STDOUT)
    with pytest.raises(RuntimeError, match=r"exited \(3\)[\s\S]*no such setting: PODSTREAM_X"):
        asyncio.run(wait_healthy(f"http://127.0.0.1:{free_port()}", timeout_s=60, process=process, log=log))
    process.wait()


async def test_no_server_at_all_times_out() -> None:
    with pytest.raises(RuntimeError, match=r"not healthy after 0\.3 s"):
        await wait_healthy(f"http://127.0.0.1:{free_port()}", timeout_s=0.3)
