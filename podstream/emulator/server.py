"""`Emulator`: the app served by a real uvicorn on loopback, in-process, plus the workers it supervises.

    async with Emulator(EmulatorConfig(endpoint_id="test", api_key="secret")).serve() as emu:
        emu.endpoint_url             # http://127.0.0.1:PORT/v2/test
        emu.worker_env("pod-1")      # RUNPOD_WEBHOOK_* & co. for a real SDK worker process
        emu.spawn_workers(2, "python -m worker")

`serve_in_thread()` is the same for synchronous code: the server runs its own loop on a thread. Leaving
either context stops the workers first (SIGTERM, then SIGKILL after the grace), then the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

import uvicorn

from podstream.emulator.app import EmulatorApp
from podstream.emulator.config import EmulatorConfig
from podstream.emulator.faults import Faults
from podstream.emulator.stats import RequestStats
from podstream.emulator.workers import WorkerFailure, WorkerProcess, WorkerSupervisor

_T = TypeVar("_T")

#: The worker key given to workers when the emulator checks none (see `Emulator.worker_env`).
NO_AUTH_WORKER_KEY = "emulator-auth-off"


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: the process that embeds the emulator owns its signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Emulator:
    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config if config is not None else EmulatorConfig()
        self.faults = Faults()
        self._stats = RequestStats()
        self._app: EmulatorApp | None = None
        self._base_url: str | None = None
        cfg = self.config
        self._supervisor = WorkerSupervisor(
            self.worker_env,
            on_spawn=self._expect_worker,
            stop_grace_s=cfg.worker_stop_grace_s,
            restart_delay_s=cfg.worker_restart_delay_s,
            max_restart_delay_s=cfg.worker_restart_max_delay_s,
            crash_window_s=cfg.worker_crash_window_s,
            max_failed_starts=cfg.worker_max_failed_starts,
            on_give_up=self._worker_gave_up,
        )
        #: Called (from the supervisor's thread) when a worker command is given up on; see `worker_failures`.
        self.on_worker_failure: Callable[[WorkerFailure], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- addresses ---------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("the emulator is not serving: use `async with emu.serve()` first")
        return self._base_url

    @property
    def endpoint_url(self) -> str:
        return f"{self.base_url}/v2/{self.config.endpoint_id}"

    def worker_env(self, pod_id: str) -> dict[str, str]:
        """The environment RunPod gives a worker, pointing at this emulator.

        The URL templates carry the placeholders the SDK substitutes itself (`$ID` in job-take is the pod
        id; `$RUNPOD_POD_ID` and `$ID` in job-done/job-stream are the pod id and the job id). The SDK's
        start-up fitness checks are switched off: one of them needs to reach 8.8.8.8.
        """
        base = self.endpoint_url
        query = f"?gpu={self.config.gpu}"
        env = {
            "RUNPOD_WEBHOOK_GET_JOB": f"{base}/job-take/$ID{query}",
            "RUNPOD_WEBHOOK_POST_OUTPUT": f"{base}/job-done/$RUNPOD_POD_ID/$ID{query}",
            "RUNPOD_WEBHOOK_POST_STREAM": f"{base}/job-stream/$RUNPOD_POD_ID/$ID{query}",
            "RUNPOD_WEBHOOK_PING": f"{base}/ping/$RUNPOD_POD_ID{query}",
            "RUNPOD_POD_ID": pod_id,
            "RUNPOD_POD_HOSTNAME": f"{pod_id}-emulator",
            "RUNPOD_ENDPOINT_ID": self.config.endpoint_id,
            # RunPod always gives a worker a key, and the SDK sends no heartbeat at all without one
            # (rp_ping returns early): with auth off, an empty key would fail every job that outlives the
            # heartbeat grace. The emulator checks nothing then, so any non-empty key will do.
            "RUNPOD_AI_API_KEY": self.config.effective_worker_key or NO_AUTH_WORKER_KEY,
            "RUNPOD_PING_INTERVAL": str(self.config.ping_interval_ms),
            "RUNPOD_GPU_COUNT": "0",
            "RUNPOD_SKIP_AUTO_SYSTEM_CHECKS": "true",
            "RUNPOD_SKIP_GPU_CHECK": "true",
        }
        return env

    # ---- state -------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Per route: requests, statuses, largest request and response body; plus event counters.

        `stats()["routes"]["job-stream"]["max_request_bytes"]` is the largest stream item ever POSTed.
        """
        return self._stats.snapshot()

    def reset_stats(self) -> None:
        self._stats.reset()

    def job(self, job_id: str) -> dict[str, Any] | None:
        """What `/status` would answer for the job, plus `buffered` (items not yet handed out) and `input` (the
        job input as RunPod got it, for tests to check what a client sent)."""
        app = self._require_app()
        job = app.table.get(job_id)
        if job is None:
            return None
        return dict(job.status_body(), buffered=len(job.stream), input=job.input)

    def expire(self, job_id: str) -> bool:
        """Delete a job now, as if its results had expired (later calls for it answer 404)."""
        return self._call(lambda app: app.table.expire(job_id))

    # ---- workers -----------------------------------------------------------------------------------

    def spawn_workers(
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
        """Start `n` worker processes (a shell-like string or an argv) with `worker_env`; they stop with us."""
        self._require_app()
        return self._supervisor.spawn(
            n, command, env=env, cwd=cwd, log_dir=log_dir, prefix=prefix, restart=restart
        )

    @property
    def workers(self) -> list[WorkerProcess]:
        return self._supervisor.processes

    @property
    def worker_failures(self) -> list[WorkerFailure]:
        """Worker commands that kept exiting soon after starting and are no longer restarted."""
        return list(self._supervisor.failures)

    def _worker_gave_up(self, failure: WorkerFailure) -> None:
        callback = self.on_worker_failure
        if callback is not None:
            callback(failure)

    def stop_workers(self) -> None:
        """Stop every spawned worker now (SIGTERM, SIGKILL after the grace); the emulator keeps serving."""
        self._require_app()
        self._supervisor.stop_all(release=self._release_polls_threadsafe)

    def ready_workers(self) -> list[str]:
        """Ids of the workers that have called in (job-take, ping, ...) and are healthy."""
        app = self._require_app()
        return [w.id for w in list(app.table.workers.values()) if w.contacted and w.unhealthy is None]

    def wait_for_workers(self, n: int = 1, timeout: float = 60.0) -> list[str]:
        """Block until `n` workers have called in (from a thread other than the emulator's loop)."""
        deadline = time.monotonic() + timeout
        while len(ready := self.ready_workers()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ready)} of {n} workers called in within {timeout:g} s")
            time.sleep(0.05)
        return ready

    async def workers_ready(self, n: int = 1, wait_s: float = 60.0) -> list[str]:
        """`wait_for_workers` for code running on the emulator's own loop."""
        deadline = time.monotonic() + wait_s
        while len(ready := self.ready_workers()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(ready)} of {n} workers called in within {wait_s:g} s")
            await asyncio.sleep(0.05)
        return ready

    def kill_worker(self, pod_id: str) -> bool:
        """SIGKILL a spawned worker and its heartbeat process, as a machine that dies."""
        return self._supervisor.kill(pod_id)

    # ---- serving -----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def serve(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[Self]:
        if self._app is not None:
            raise RuntimeError("this emulator is already serving")
        app = EmulatorApp(self.config, self.faults, self._stats, kill_worker=self._supervisor.kill)
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        bound_port = sock.getsockname()[1]
        server = _Server(
            uvicorn.Config(
                app.app,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=3,
                timeout_keep_alive=30,
            )
        )
        shown_host = f"[{host}]" if ":" in host else host
        self._loop = asyncio.get_running_loop()
        self._app = app
        self._base_url = f"http://{shown_host}:{bound_port}"
        app.start()
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the emulator's server stopped before it started")
                await asyncio.sleep(0.01)
            yield self
        finally:
            await asyncio.to_thread(self._supervisor.stop_all, release=self._release_threadsafe)
            app.release()
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=10)
            await app.stop()
            sock.close()
            self._app = None
            self._loop = None
            self._base_url = None

    @contextlib.contextmanager
    def serve_in_thread(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[Self]:
        """`serve()` on its own event loop thread, for synchronous tests and benchmarks."""
        ready = threading.Event()
        stop: list[asyncio.Event] = []
        failure: list[BaseException] = []

        async def main() -> None:
            stop.append(asyncio.Event())
            async with self.serve(host, port):
                ready.set()
                await stop[0].wait()

        def run() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # handed to the caller's thread
                failure.append(exc)
            finally:
                ready.set()

        thread = threading.Thread(target=run, name="podstream-emulator", daemon=True)
        thread.start()
        ready.wait()
        if failure:
            thread.join()
            raise failure[0]
        loop = self._loop
        assert loop is not None
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(stop[0].set)
            thread.join(timeout=60)
            if failure:
                raise failure[0]

    # ---- internals ---------------------------------------------------------------------------------

    def _require_app(self) -> EmulatorApp:
        if self._app is None:
            raise RuntimeError("the emulator is not serving")
        return self._app

    def _call(self, fn: Callable[[EmulatorApp], _T]) -> _T:
        """Run `fn(app)` on the server's loop, from any thread."""
        app = self._require_app()
        loop = self._loop
        assert loop is not None
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return fn(app)

        async def call() -> _T:
            return fn(app)

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=10)

    def _expect_worker(self, pod_id: str) -> None:
        if self._app is not None:
            self._call(lambda app: app.table.expect_worker(pod_id))

    def _release_polls_threadsafe(self) -> None:
        app, loop = self._app, self._loop
        if app is not None and loop is not None:
            loop.call_soon_threadsafe(app.table.release_worker_polls)

    def _release_threadsafe(self) -> None:
        app, loop = self._app, self._loop
        if app is not None and loop is not None:
            loop.call_soon_threadsafe(app.release)
