"""Shared harness of the relay benchmarks: the emulator in this process, the relay as a child process.

The relay runs in its own process (as in production) so its CPU and RSS are its own; the emulator and the
scripted worker (POSTing envelopes to the emulator's job-stream URL) run on this process's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from podstream.emulator import Emulator, EmulatorConfig

#: A server process, as `wait_healthy` watches it: started with asyncio or with `subprocess.Popen`.
Server = asyncio.subprocess.Process | subprocess.Popen[bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Stack:
    emu: Emulator
    relay_url: str
    process: asyncio.subprocess.Process
    http: httpx.AsyncClient
    data_dir: Path
    pod: str = "bench-pod"

    @property
    def ws_url(self) -> str:
        return self.relay_url.replace("http", "ws", 1) + "/v1/ws"

    async def run_job(self) -> str:
        r = await self.http.post(f"{self.emu.endpoint_url}/run", json={"input": {}})
        job: str = r.json()["id"]
        return job

    async def take(self) -> str:
        while True:
            r = await self.http.get(f"{self.emu.endpoint_url}/job-take/{self.pod}", params={"gpu": "CPU"})
            if r.status_code == 200:
                job: str = r.json()["id"]
                return job

    async def post(self, job: str, envelope: dict[str, Any]) -> None:
        r = await self.http.post(
            f"{self.emu.endpoint_url}/job-stream/{self.pod}/{job}", params={"gpu": "CPU", "isStream": "false"},
            json={"output": envelope},
        )  # fmt: skip
        r.raise_for_status()

    async def done(self, job: str) -> None:
        r = await self.http.post(f"{self.emu.endpoint_url}/job-done/{self.pod}/{job}", json={"output": []})
        r.raise_for_status()

    async def attach(self, job: str) -> None:
        r = await self.http.post(f"{self.relay_url}/v1/jobs/{job}/attach")
        r.raise_for_status()

    async def wait_record(self, job: str) -> None:
        """Until the job has at least one record (through the events long poll)."""
        while True:
            r = await self.http.get(
                f"{self.relay_url}/v1/jobs/{job}/events", params={"format": "json", "after": 0, "wait": 10000}
            )
            r.raise_for_status()
            if r.json()["events"]:
                return

    async def wait_done(self, job: str, item_seen: list[float] | None = None) -> dict[str, Any]:
        """The job's `done` record; `item_seen` gets the `time.perf_counter()` at which each item record was
        first seen (through the events long poll, as a subscriber would)."""
        after = 0
        while True:
            r = await self.http.get(
                f"{self.relay_url}/v1/jobs/{job}/events",
                params={"format": "json", "after": after, "wait": 10000},
            )
            body: dict[str, Any] = r.json()
            now = time.perf_counter()
            if item_seen is not None:
                item_seen += [now for e in body["events"] if e["k"] == "item"]
            if body["events"]:
                after = body["events"][-1]["seq"]
                if body["events"][-1]["k"] == "done":
                    done: dict[str, Any] = body["events"][-1]
                    return done


async def wait_healthy(
    url: str, *, timeout_s: float, process: Server | None = None, log: Path | None = None
) -> None:
    """Until `{url}/healthz` answers 200, else RuntimeError after `timeout_s`.

    With `process` (the server's), it fails as soon as that process has exited instead of waiting out the
    timeout, and says what the process wrote: `log`, and an asyncio process's stdout and stderr where they
    are pipes. A caller without an event loop (a `subprocess.Popen` server) runs it with `asyncio.run`."""
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient(timeout=2) as http:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"{url}/healthz")).status_code == 200:
                    return
            code = None if process is None else _returncode(process)
            if process is not None and code is not None:
                output = await _output(process, log)
                raise RuntimeError(f"{url}: the server exited ({code}) before it was healthy{output}")
            if time.monotonic() > deadline:
                output = "" if process is None else await _output(process, log)
                raise RuntimeError(f"{url}: not healthy after {timeout_s} s{output}")
            await asyncio.sleep(0.05)


def _returncode(process: Server) -> int | None:
    return process.poll() if isinstance(process, subprocess.Popen) else process.returncode


async def _output(process: Server, log: Path | None) -> str:
    parts = [] if log is None else [await asyncio.to_thread(_read, log)]
    if isinstance(process, asyncio.subprocess.Process) and process.returncode is not None:
        # only once it has exited: before, read() would wait for output that may never come
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                parts.append((await pipe.read()).decode(errors="replace"))
    return "".join(f"\n{part}" for part in parts if part)


def _read(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else ""


class Relay:
    """`podstream relay` as a child process on one port and data directory, started, killed and started
    again at will (each start recovers from that data directory, as a restart in production does).

    `args` follow `--runpod-url`, `--data-dir` and `--port`; with `log` its stdout and stderr are appended
    there, else they are this process's own."""

    def __init__(
        self, runpod_url: str, data_dir: Path, *args: str, env: dict[str, str], log: Path | None = None
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runpod_url = runpod_url
        self.data_dir = data_dir
        self.args = args
        self.env = env
        self.log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, *, timeout_s: float = 30.0) -> asyncio.subprocess.Process:
        """Start it and wait until it is healthy (else RuntimeError, with what it wrote)."""
        argv = [
            sys.executable, "-m", "podstream", "relay", "--runpod-url", self.runpod_url, "--data-dir",
            str(self.data_dir), "--port", str(self.port), *self.args,
        ]  # fmt: skip
        if self.log is None:
            self.process = await asyncio.create_subprocess_exec(*argv, env=self.env)
        else:
            with self.log.open("ab") as log:
                self.process = await asyncio.create_subprocess_exec(
                    *argv, env=self.env, stdout=log, stderr=log
                )
        try:
            await wait_healthy(self.url, timeout_s=timeout_s, process=self.process, log=self.log)
        except RuntimeError:
            await self.stop()  # one that never became healthy is not left running
            raise
        return self.process

    async def kill(self) -> None:
        """SIGKILL: no shutdown, whatever it had not written is lost."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not exited 20 s later."""
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 20)
            except TimeoutError:
                await self.kill()


@contextlib.asynccontextmanager
async def stack(
    *relay_args: str,
    fsync: str = "always",
    runpod_url: str | None = None,
    api_key: str | None = None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Stack]:
    """The emulator and a relay following it (or following `runpod_url`, a RunPod stand-in, instead).

    With `api_key` the relay runs with auth on (that one key, every scope) and `Stack.http` sends it;
    without, insecure. `env` adds to the relay's environment."""
    # The scripted worker sends no heartbeats (worker liveness is beside the point here): a long grace, so a
    # slow run on a busy machine is not failed by the emulator's heartbeat check.
    config = EmulatorConfig(max_stream_item_bytes=1_000_000, job_take_wait_s=2.0, heartbeat_grace_s=3600.0)
    with tempfile.TemporaryDirectory(prefix="podstream-bench-") as tmp:
        async with Emulator(config).serve(host="127.0.0.1", port=0) as emu:
            # Auth costs one HMAC per connection or request: beside the point of these benchmarks.
            relay_env = {**os.environ, "PODSTREAM_FSYNC": fsync, **(env or {})}
            if api_key is None:
                relay_env["PODSTREAM_INSECURE"] = "1"
            else:
                relay_env["PODSTREAM_API_KEYS"] = "sha256:" + hashlib.sha256(api_key.encode()).hexdigest()
            relay = Relay(
                runpod_url or emu.endpoint_url, Path(tmp) / "data", "--log-level", "warning", *relay_args,
                env=relay_env,
            )  # fmt: skip
            headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
            try:
                process = await relay.start()
                async with httpx.AsyncClient(timeout=60, headers=headers) as http:
                    yield Stack(emu, relay.url, process, http, relay.data_dir)
            finally:
                await relay.stop()
