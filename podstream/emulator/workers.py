"""Real worker processes, started with the emulator's `RUNPOD_WEBHOOK_*` environment and supervised.

Each worker runs in its own process group (session), because the runpod SDK starts its heartbeat in a
child process: killing a worker means killing the group, or the orphaned pinger keeps the worker "alive".
A worker that exits on its own is restarted under a new pod id (as RunPod replaces a lost worker), unless
it was spawned with `restart=False` or the supervisor is stopping.

A worker command that cannot start (`python -m worker` outside the venv, a missing model, a syntax error)
would otherwise be restarted in a tight silent loop. Exits within `crash_window_s` of starting count as
failed starts: each restart after one waits longer (`podstream.backoff`, exponential with full jitter),
and after `max_failed_starts` in a row the supervisor stops restarting that worker and records a
`WorkerFailure` (the command, its exit status and the last lines of its log) for the caller to report.
A worker killed on purpose (`kill`, fault injection) never counts as a failed start.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

from podstream.backoff import Backoff

#: Log lines a `WorkerFailure` carries.
LOG_TAIL_LINES: Final = 12


@dataclass(frozen=True)
class WorkerFailure:
    """A worker command that kept failing at start, so it is no longer restarted."""

    command: list[str]
    failed_starts: int
    returncode: int | None
    log_path: Path | None
    log_tail: list[str]

    @property
    def message(self) -> str:
        """One line: what failed, how often, and where its output is."""
        status = _exit_text(self.returncode)
        where = f"; its log: {self.log_path}" if self.log_path is not None else ""
        return (
            f"the worker command `{shlex.join(self.command)}` exited {self.failed_starts} times in a row "
            f"soon after starting ({status}); not restarting it{where}"
        )


def _exit_text(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


@dataclass(eq=False)
class WorkerProcess:
    pod_id: str
    command: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path | None
    restart: bool
    started_at: float = field(default_factory=time.monotonic)
    killed: bool = False  # by us, on purpose (kill_worker / fault injection)
    replaced_by: str | None = None
    #: Failed starts in a row in this worker's line of replacements, this one included once it exited.
    failed_starts: int = 0
    #: When a replacement may start (monotonic); set once the exit was seen.
    restart_at: float | None = None
    gave_up: bool = False
    _log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, sig)

    def log_text(self) -> str:
        """The worker's stdout and stderr so far (only when it was spawned with a log directory)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")


class WorkerSupervisor:
    def __init__(
        self,
        env_for: Callable[[str], dict[str, str]],
        *,
        on_spawn: Callable[[str], None] = lambda pod_id: None,
        stop_grace_s: float = 5.0,
        poll_s: float = 0.2,
        restart_delay_s: float = 1.0,
        max_restart_delay_s: float = 30.0,
        crash_window_s: float = 30.0,
        max_failed_starts: int = 5,
        on_give_up: Callable[[WorkerFailure], None] = lambda failure: None,
    ) -> None:
        if max_failed_starts < 1:
            raise ValueError("max_failed_starts must be at least 1")
        self._env_for = env_for
        self._on_spawn = on_spawn
        self._stop_grace_s = stop_grace_s
        self._poll_s = poll_s
        self._backoff = Backoff(restart_delay_s, max_restart_delay_s)
        self._crash_window_s = crash_window_s
        self._max_failed_starts = max_failed_starts
        self._on_give_up = on_give_up
        #: Worker commands given up on, oldest first.
        self.failures: list[WorkerFailure] = []
        self._lock = threading.Lock()
        self._processes: list[WorkerProcess] = []
        self._counter = 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._spawn_args: dict[str, tuple[Mapping[str, str] | None, str | None, Path | None, str]] = {}

    @property
    def processes(self) -> list[WorkerProcess]:
        with self._lock:
            return list(self._processes)

    def get(self, pod_id: str) -> WorkerProcess | None:
        with self._lock:
            return next((p for p in self._processes if p.pod_id == pod_id), None)

    def spawn(
        self,
        n: int,
        command: str | Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        log_dir: str | Path | None = None,
        prefix: str = "worker",
        restart: bool = True,
    ) -> list[WorkerProcess]:
        if n < 0:
            raise ValueError("n must not be negative")
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        if not argv:
            raise ValueError("the worker command is empty")
        log_path = Path(log_dir) if log_dir is not None else None
        started = [
            self._start(argv, env, str(cwd) if cwd is not None else None, log_path, prefix, restart)
            for _ in range(n)
        ]
        self._ensure_monitor()
        return started

    def kill(self, pod_id: str, sig: int = signal.SIGKILL) -> bool:
        """Kill a worker (its whole process group) now, as a crashed machine would die."""
        process = self.get(pod_id)
        if process is None or not process.alive:
            return False
        process.killed = True
        process.signal_group(sig)
        return True

    def stop_all(self, *, release: Callable[[], None] = lambda: None) -> None:
        """SIGTERM every worker, call `release` (wakes their long-polls), wait, then SIGKILL what is left."""
        self._stopping.set()
        processes = self.processes
        for process in processes:
            process.signal_group(signal.SIGTERM)
        release()
        deadline = time.monotonic() + self._stop_grace_s
        for process in processes:
            remaining = max(0.0, deadline - time.monotonic())
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=remaining)
        for process in processes:
            process.signal_group(signal.SIGKILL)  # also the SDK's pinger, should it have outlived its parent
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=5)
            if process._log is not None:
                process._log.close()
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout=5)
        self._stopping.clear()  # spawning again starts a fresh monitor

    # ---- internals ---------------------------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        with self._lock:
            self._counter += 1
            return f"{prefix}-{self._counter}"

    def _start(
        self,
        argv: list[str],
        env: Mapping[str, str] | None,
        cwd: str | None,
        log_dir: Path | None,
        prefix: str,
        restart: bool,
    ) -> WorkerProcess:
        pod_id = self._next_id(prefix)
        full_env = dict(os.environ)
        full_env.update(self._env_for(pod_id))
        if env:
            full_env.update(env)
        log: IO[bytes] | None = None
        log_path: Path | None = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            log_path = log_dir / f"{pod_id}.log"
            log = log_path.open("wb")
        self._on_spawn(pod_id)
        popen = subprocess.Popen(
            argv,
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            start_new_session=True,
        )
        process = WorkerProcess(pod_id, argv, popen, log_path, restart, _log=log)
        with self._lock:
            self._processes.append(process)
            self._spawn_args[pod_id] = (env, cwd, log_dir, prefix)
        return process

    def _ensure_monitor(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._monitor, name="emulator-workers", daemon=True)
            self._thread.start()

    def _monitor(self) -> None:
        while not self._stopping.wait(self._poll_s):
            for process in self.processes:
                if process.alive or not process.restart or process.replaced_by is not None:
                    continue
                if process.gave_up or self._stopping.is_set():
                    continue
                if process.restart_at is None:
                    self._exited(process)
                    continue
                if time.monotonic() < process.restart_at:
                    continue  # backing off
                env, cwd, log_dir, prefix = self._spawn_args[process.pod_id]
                replacement = self._start(process.command, env, cwd, log_dir, prefix, True)
                replacement.failed_starts = process.failed_starts
                process.replaced_by = replacement.pod_id

    def _exited(self, process: WorkerProcess) -> None:
        """A worker just exited: count a failed start, then schedule its replacement or give up."""
        process.signal_group(signal.SIGKILL)  # the orphaned pinger must not outlive its worker
        ran_s = time.monotonic() - process.started_at
        if process.killed or ran_s >= self._crash_window_s:
            process.failed_starts = 0  # it ran (or we killed it): a replacement starts afresh
        else:
            process.failed_starts += 1
        if process.failed_starts >= self._max_failed_starts:
            process.gave_up = True
            tail = process.log_text().splitlines()[-LOG_TAIL_LINES:] if process.log_path else []
            failure = WorkerFailure(
                process.command, process.failed_starts, process.returncode, process.log_path, tail
            )
            with self._lock:
                self.failures.append(failure)
            self._on_give_up(failure)
            return
        process.restart_at = time.monotonic() + self._backoff.delay(max(process.failed_starts - 1, 0))
