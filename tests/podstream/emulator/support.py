"""Shared test helpers: a hand-driven worker and client that speak RunPod's API as the real SDKs do."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import httpx

from podstream.emulator import Emulator, EmulatorConfig

API_KEY = "secret"
WORKER_KEY = "worker-secret"


def config(**changes: Any) -> EmulatorConfig:
    """Production semantics, short clocks, distinct client and worker keys."""
    base: dict[str, Any] = {
        "endpoint_id": "test",
        "api_key": API_KEY,
        "worker_api_key": WORKER_KEY,
        "tick_s": 0.05,
        "job_take_wait_s": 0.5,
        "job_stop_wait_s": 0.5,
        "stream_wait_min_ms": 100,
    }
    base.update(changes)
    return EmulatorConfig.for_tests(**base)


class FakeWorker:
    """Speaks the worker side exactly as runpod-python 1.12.0 does (URLs, headers, body encoding)."""

    def __init__(self, emu: Emulator, client: httpx.AsyncClient, pod_id: str = "pod-1") -> None:
        self.emu = emu
        self.client = client
        self.pod_id = pod_id
        env = emu.worker_env(pod_id)
        self.take_url = env["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", pod_id)
        self.done_url = env["RUNPOD_WEBHOOK_POST_OUTPUT"].replace("$RUNPOD_POD_ID", pod_id)
        self.stream_url = env["RUNPOD_WEBHOOK_POST_STREAM"].replace("$RUNPOD_POD_ID", pod_id)
        self.ping_url = env["RUNPOD_WEBHOOK_PING"].replace("$RUNPOD_POD_ID", pod_id)
        self.stop_url = self.take_url.replace("/job-take/", "/job-stop/")
        self.headers = {"Authorization": env["RUNPOD_AI_API_KEY"]}

    async def take(self, batch_size: int = 1) -> httpx.Response:
        url = self.take_url
        if batch_size > 1:
            url = url.replace("/job-take/", "/job-take-batch/") + f"&batch_size={batch_size}"
        return await self.client.get(url + "&job_in_progress=0", headers=self.headers)

    async def take_one(self) -> dict[str, Any]:
        response = await self.take()
        assert response.status_code == 200, response.text
        job: dict[str, Any] = response.json()
        return job

    async def _post(self, template: str, job_id: str, body: Any, is_stream: bool) -> httpx.Response:
        url = template.replace("$ID", job_id) + f"&isStream={'true' if is_stream else 'false'}"
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = dict(self.headers, **{"Content-Type": "application/x-www-form-urlencoded"})
        return await self.client.post(url, content=data, headers=headers)

    async def stream(self, job_id: str, output: Any) -> httpx.Response:
        return await self._post(self.stream_url, job_id, {"output": output}, False)

    async def stream_raw(self, job_id: str, body: bytes) -> httpx.Response:
        return await self._post(self.stream_url, job_id, body, False)

    async def done(self, job_id: str, body: Any, is_stream: bool = True) -> httpx.Response:
        return await self._post(self.done_url, job_id, body, is_stream)

    async def stop_poll(self) -> httpx.Response:
        return await self.client.get(self.stop_url, headers=self.headers)

    async def ping(self, **params: str) -> httpx.Response:
        return await self.client.get(self.ping_url, params=params, headers=self.headers)


class Client:
    """The client side of RunPod's API, by hand (the SDK's own clients are in test_conformance.py)."""

    def __init__(self, emu: Emulator, client: httpx.AsyncClient) -> None:
        self.emu = emu
        self.http = client
        self.headers = {"Authorization": f"Bearer {API_KEY}"}

    async def call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.request(
            method, f"{self.emu.endpoint_url}/{path}", headers=self.headers, **kwargs
        )

    async def run(self, job_input: Any, **extra: Any) -> str:
        response = await self.call("POST", "run", json={"input": job_input, **extra})
        assert response.status_code == 200, response.text
        job_id: str = response.json()["id"]
        return job_id

    async def status(self, job_id: str) -> dict[str, Any]:
        response = await self.call("GET", f"status/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def stream(self, job_id: str, wait_ms: int | None = None) -> dict[str, Any]:
        params = {} if wait_ms is None else {"wait": str(wait_ms)}
        response = await self.call("GET", f"stream/{job_id}", params=params)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@dataclass
class Setup:
    emu: Emulator
    client: Client
    worker: FakeWorker


def sdk(emu: Emulator) -> Any:
    """The runpod SDK pointed at `emu` as a client, with `API_KEY`. Imported here, not at the top: importing
    it runs py-cpuinfo in a subprocess (about a second), which every xdist worker would pay when it collects
    a module that imports this one."""
    import runpod

    runpod.api_key = API_KEY
    runpod.endpoint_url_base = f"{emu.base_url}/v2"
    return runpod


def endpoint(emu: Emulator) -> Any:
    """`runpod.Endpoint` of `emu`'s endpoint."""
    return sdk(emu).Endpoint(emu.config.endpoint_id)


def gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its parent counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True
