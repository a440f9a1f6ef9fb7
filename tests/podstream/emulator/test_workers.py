"""WorkerSupervisor: real processes, process groups, restarts, stop."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from podstream.emulator.workers import WorkerFailure, WorkerSupervisor
from tests.podstream.emulator.support import gone

# A "worker" that, like the runpod SDK, starts a child process (its pinger), then writes both pids.
WITH_CHILD = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
open(os.environ["PIDFILE"] + ".tmp", "w").write(f"{os.getpid()} {child.pid}")
os.rename(os.environ["PIDFILE"] + ".tmp", os.environ["PIDFILE"])
time.sleep(60)
"""


def until(condition: Callable[[], bool], within_s: float = 15) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.05)


def supervisor(stop_grace_s: float = 5.0) -> WorkerSupervisor:
    return WorkerSupervisor(lambda pod_id: {"RUNPOD_POD_ID": pod_id}, stop_grace_s=stop_grace_s)


def test_worker_gets_its_env_and_log(tmp_path: Path) -> None:
    sup = supervisor()
    try:
        (w,) = sup.spawn(
            1,
            [sys.executable, "-c", "import os; print(os.environ['RUNPOD_POD_ID'], os.environ['EXTRA'])"],
            env={"EXTRA": "yes"},
            log_dir=tmp_path,
            restart=False,
        )
        until(lambda: not w.alive)
        assert w.pod_id == "worker-1" and w.log_text().strip() == "worker-1 yes"
    finally:
        sup.stop_all()


def test_kill_takes_the_whole_process_group(tmp_path: Path) -> None:
    sup = supervisor()
    pidfile = tmp_path / "pids"
    try:
        (w,) = sup.spawn(1, [sys.executable, "-c", WITH_CHILD], env={"PIDFILE": str(pidfile)}, restart=False)
        until(pidfile.exists)
        parent, child = map(int, pidfile.read_text().split())
        assert sup.kill(w.pod_id)
        until(lambda: gone(parent) and gone(child))
        assert w.killed and not sup.kill(w.pod_id)  # already dead
    finally:
        sup.stop_all()


def test_a_worker_that_exits_is_replaced_under_a_new_id() -> None:
    spawned: list[str] = []
    sup = WorkerSupervisor(lambda pod_id: {}, on_spawn=spawned.append, restart_delay_s=0.1, poll_s=0.05)
    try:
        (w,) = sup.spawn(1, "python3 -c 'import time; time.sleep(0.3)'", prefix="pod")
        until(lambda: w.replaced_by is not None)
        assert w.replaced_by == "pod-2" and spawned[:2] == ["pod-1", "pod-2"]
        assert sup.get("pod-2") is not None
    finally:
        sup.stop_all()
    assert all(not p.alive for p in sup.processes)


def test_stop_all_escalates_to_sigkill(tmp_path: Path) -> None:
    sup = supervisor(stop_grace_s=0.5)
    ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"
    (w,) = sup.spawn(1, [sys.executable, "-c", ignore_term], log_dir=tmp_path)
    until(lambda: "ready" in w.log_text())
    released: list[bool] = []
    started = time.monotonic()
    sup.stop_all(release=lambda: released.append(True))
    assert released == [True]
    assert not w.alive and w.returncode == -signal.SIGKILL
    assert time.monotonic() - started < 10


def test_bad_arguments() -> None:
    sup = supervisor()
    for n, command in ((-1, "true"), (1, "")):
        try:
            sup.spawn(n, command)
        except ValueError:
            continue
        raise AssertionError(f"spawn({n}, {command!r}) was accepted")


def test_failed_starts_back_off_then_the_worker_is_given_up(tmp_path: Path) -> None:
    given_up: list[WorkerFailure] = []
    spawned: list[str] = []
    sup = WorkerSupervisor(
        lambda pod_id: {}, on_spawn=spawned.append, restart_delay_s=0.2, max_restart_delay_s=0.4,
        crash_window_s=30, max_failed_starts=4, poll_s=0.02, on_give_up=given_up.append,
    )  # fmt: skip
    try:
        script = "import sys; print('loading model'); print('OSError: no such file', flush=True); sys.exit(1)"
        sup.spawn(1, [sys.executable, "-c", script], log_dir=tmp_path, prefix="pod")
        until(lambda: bool(given_up), within_s=30)
        time.sleep(0.5)  # nothing more is started once it was given up on
        assert spawned == ["pod-1", "pod-2", "pod-3", "pod-4"]
        (failure,) = given_up
        assert sup.failures == [failure] and failure.failed_starts == 4 and failure.returncode == 1
        assert failure.log_tail == ["loading model", "OSError: no such file"]
        assert failure.log_path == tmp_path / "pod-4.log"
        assert "exited 4 times in a row soon after starting (exit status 1)" in failure.message
        assert [p.failed_starts for p in sup.processes] == [1, 2, 3, 4]
    finally:
        sup.stop_all()


def test_a_worker_that_ran_or_was_killed_does_not_count_as_a_failed_start() -> None:
    given_up: list[WorkerFailure] = []
    sup = WorkerSupervisor(
        lambda pod_id: {}, restart_delay_s=0.01, crash_window_s=0.0, max_failed_starts=1, poll_s=0.02,
        on_give_up=given_up.append,
    )  # fmt: skip
    try:
        (w,) = sup.spawn(1, [sys.executable, "-c", "pass"], prefix="pod")
        until(lambda: len(sup.processes) >= 3)  # a crash window of 0 s: every run counts as having run
        assert not given_up
    finally:
        sup.stop_all()
    sup = WorkerSupervisor(
        lambda pod_id: {}, restart_delay_s=0.01, max_failed_starts=1, poll_s=0.02, on_give_up=given_up.append
    )
    try:
        (w,) = sup.spawn(1, [sys.executable, "-c", "import time; time.sleep(60)"], prefix="pod")
        assert sup.kill(w.pod_id)
        until(lambda: w.replaced_by is not None)  # killed on purpose: replaced, not given up on
        assert not given_up and w.failed_starts == 0
    finally:
        sup.stop_all()
