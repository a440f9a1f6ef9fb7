"""Gap recovery end to end: real worker processes sharing an output cache, the emulator dropping stream items,
a relay killed between draining RunPod and writing what it drained, and what cannot be recovered."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench._relay_stack import free_port, wait_healthy
from podstream import wire
from podstream.emulator import Emulator, EmulatorConfig
from relay.api.auth import hash_key
from relay.config import RelaySettings
from relay.ingest.recovery import GapRecovery, ResendRequest, compact, crash_after_drain, wanted
from tests.relay.conftest import API_KEY, TOKEN_SECRET, ScriptedWorker, relay_settings, sha, start_relay
from tests.relay.file_worker import file_bytes

ROOT = Path(__file__).resolve().parents[3]
WORKER = [sys.executable, "-m", "tests.relay.file_worker"]
SIZES = [3000, 2500, 3000, 2900]  # 1024-byte parts: 3 parts each, so 12 parts and the manifest is seq 13


RUNPOD_KEY = "runpod-test-key"


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """The emulator with an API key (spawned SDK workers only send heartbeats when they have one) and a
    heartbeat grace that a scripted worker, which never pings, does not run into."""
    config = EmulatorConfig.for_tests(api_key=RUNPOD_KEY, heartbeat_grace_s=30.0)
    async with Emulator(config).serve(host="127.0.0.1", port=0) as emu:
        yield emu


def settings(tmp_path: Path, emu: Emulator, **changes: Any) -> Any:
    return relay_settings(tmp_path, emu, runpod_key=RUNPOD_KEY, **changes)


def video_job(sizes: list[int]) -> dict[str, Any]:
    items = [{"prompt": str(size), "id": f"clip{i}"} for i, size in enumerate(sizes)]
    return {"input": {"task": "text-to-video", "items": items, "output": {"part_bytes": 1024}}}


def spawn(emu: Emulator, n: int, tmp_path: Path, **env: str) -> None:
    variables = {"PODSTREAM_CACHE_DIR": str(tmp_path / "cache"), "PODSTREAM_UPLOAD_URL": "", **env}
    emu.spawn_workers(n, WORKER, env=variables, cwd=ROOT, log_dir=tmp_path / "logs")


async def finished(http: httpx.AsyncClient, base: str, job: str, seconds: float = 60) -> dict[str, Any]:
    for _ in range(int(seconds * 10)):
        body: dict[str, Any] = (await http.get(f"{base}/v1/jobs/{job}")).json()
        if body.get("finished"):
            return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job} did not finish: {body}")


async def assert_every_item_arrived(http: httpx.AsyncClient, base: str, job: str, sizes: list[int]) -> None:
    manifest = await finished(http, base, job)
    assert manifest["status"] == "COMPLETED", manifest
    assert manifest["errors"] == [] and manifest["error_count"] == 0, manifest["errors"]
    assert [i["item"] for i in manifest["items"]] == list(range(len(sizes)))
    for entry, size in zip(manifest["items"], sizes, strict=True):
        expected = file_bytes(entry["item"], size)
        assert (entry["size"], entry["sha256"]) == (size, sha(expected))
        got = await http.get(entry["url"])
        assert got.status_code == 200 and got.content == expected


def worker_logs(tmp_path: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted((tmp_path / "logs").glob("*.log")))


async def test_stream_items_the_sdk_lost_come_back_from_the_output_cache(
    tmp_path: Path, emulator: Emulator
) -> None:
    spawn(emulator, 2, tmp_path)
    await emulator.workers_ready(2)
    server = await start_relay(settings(tmp_path, emulator))
    try:
        # Two parts vanish inside "RunPod" (answered 200, thrown away) and the manifest is refused with a
        # 400, which the SDK drops silently, as it does for a body over the cap.
        emulator.faults.drop_stream_items = {6, 9}
        emulator.faults.reject_stream_items = {13}
        async with server.http() as http:
            submitted = await http.post(f"{server.url}/v1/jobs", json=video_job(SIZES))
            assert submitted.status_code == 201, submitted.text
            job = submitted.json()["id"]
            try:
                await assert_every_item_arrived(http, server.url, job, SIZES)
            except AssertionError:
                print(worker_logs(tmp_path))
                raise
            events = (await http.get(f"{server.url}/v1/jobs/{job}/events", params={"format": "json"})).json()
        assert emulator.stats()["events"]["stream_items_dropped"] == 2
        assert emulator.stats()["routes"]["run"]["requests"] == 2  # the job and one resend job
        kinds = [e["k"] for e in events["events"]]
        assert kinds.count("item") == 4 and kinds[-1] == "done" and "error" not in kinds
        assert server.relay.pollers.recovery.recovered == 3
    finally:
        await server.stop()


async def test_a_relay_killed_between_draining_and_persisting_restores_every_item(
    tmp_path: Path, emulator: Emulator
) -> None:
    spawn(emulator, 1, tmp_path, FILE_WORKER_SLEEP_S="0.5")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ, "PODSTREAM_API_KEYS": hash_key(API_KEY), "PODSTREAM_TOKEN_SECRET": TOKEN_SECRET,
        "PODSTREAM_FSYNC": "never", "PODSTREAM_RUNPOD_KEY": RUNPOD_KEY,
    }  # fmt: skip
    args = [
        sys.executable, "-m", "podstream", "relay", "--runpod-url", emulator.endpoint_url, "--data-dir",
        str(tmp_path / "data"), "--port", str(port), "--poll-wait-ms", "1000", "--log-level", "warning",
    ]  # fmt: skip

    async with relay_process(
        args, {**env, "PODSTREAM_TEST_CRASH_AFTER_DRAIN": "2"}, tmp_path / "relay1.log"
    ) as relay:
        await emulator.workers_ready(1)
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {API_KEY}"}, timeout=10) as http:
            await wait_healthy(base, timeout_s=30, process=relay, log=tmp_path / "relay1.log")
            submitted = await http.post(f"{base}/v1/jobs", json=video_job(SIZES))
            assert submitted.status_code == 201, submitted.text
            job = submitted.json()["id"]
            # The relay drains its second non-empty /stream answer and dies before writing any of it.
            assert await asyncio.wait_for(relay.wait(), 60) == -signal.SIGKILL
    assert "killing the relay after draining 2" in (tmp_path / "relay1.log").read_text()

    async with (
        relay_process(args, env, tmp_path / "relay2.log") as relay,
        httpx.AsyncClient(headers={"authorization": f"Bearer {API_KEY}"}, timeout=10) as http,
    ):
        await wait_healthy(base, timeout_s=30, process=relay, log=tmp_path / "relay2.log")
        try:
            await assert_every_item_arrived(http, base, job, SIZES)
        except AssertionError:
            print(worker_logs(tmp_path), (tmp_path / "relay2.log").read_text())
            raise
    assert emulator.stats()["routes"]["run"]["requests"] == 2  # the job and the resend job


class relay_process:  # used like a function: `async with relay_process(...) as process`
    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args, self.env, self.log = args, env, log
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> asyncio.subprocess.Process:
        out = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.args, env=self.env, stdout=out, stderr=asyncio.subprocess.STDOUT
            )
        finally:
            os.close(out)
        return self.process

    async def __aexit__(self, *exc: object) -> None:
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 15)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


# ---------------------------------------------------------------------------- what cannot be recovered


@pytest.fixture
async def scripted(emulator: Emulator) -> AsyncIterator[ScriptedWorker]:
    worker = ScriptedWorker(emulator)
    worker.http.headers["authorization"] = RUNPOD_KEY
    try:
        yield worker
    finally:
        await worker.close()


async def test_what_no_worker_has_is_reported(
    tmp_path: Path, emulator: Emulator, scripted: ScriptedWorker
) -> None:
    server = await start_relay(settings(tmp_path, emulator, recovery_attempts=2))
    try:
        async with server.http() as http:
            job = (await http.post(f"{server.url}/v1/jobs", json={"input": {"x": 1}})).json()["id"]
            taken = await scripted.take()
            assert taken["id"] == job
            envs = wire.Envelopes(job)
            data = os.urandom(5000)
            parts = list(envs.parts(0, data, mime="video/mp4", part_bytes=2000))
            manifest = envs.manifest([wire.ManifestItem(0, "", "ok", "video/mp4", 5000, sha(data), 3)])
            for envelope in [parts[0], parts[2], *manifest]:  # part 1 (seq 2) is lost
                await scripted.post(job, envelope)
            await scripted.done(job)
            # Each resend job is answered by a worker that does not have the job in its cache.
            requests = []
            for _ in range(2):
                resend = await scripted.take()
                requests.append(resend["input"]["resend"])
                await scripted.post(
                    resend["id"], {"resent": {"job": job, "count": 0, "reason": "not_cached"}}
                )
                await scripted.done(resend["id"])
            body = await finished(http, server.url, job)
        assert requests == [{"job": job, "run": envs.run, "seqs": [2]}] * 2
        codes = [e["code"] for e in body["errors"]]
        assert codes == ["unrecovered", "gap", "incomplete", "missing_item"], body["errors"]
        assert "does not have this job in its output cache" in body["errors"][0]["message"]
        assert body["items"] == []
    finally:
        await server.stop()


async def test_a_resend_job_that_fails_is_reported(
    tmp_path: Path, emulator: Emulator, scripted: ScriptedWorker
) -> None:
    server = await start_relay(settings(tmp_path, emulator))
    try:
        async with server.http() as http:
            job = (await http.post(f"{server.url}/v1/jobs", json={"input": {}})).json()["id"]
            await scripted.take()
            envs = wire.Envelopes(job)
            await scripted.post(job, envs.progress(0, 1, 2))  # and then nothing: no manifest
            await scripted.done(job)
            resend = await scripted.take()
            assert resend["input"] == {"resend": {"job": job, "run": envs.run, "after": 1}}
            await scripted.done(resend["id"], error="input.resend: unknown field")
            body = await finished(http, server.url, job)
        assert [e["code"] for e in body["errors"]] == ["unrecovered", "missing_manifest"]
        assert "ended FAILED: input.resend: unknown field" in body["errors"][0]["message"]
    finally:
        await server.stop()


# ------------------------------------------------------------------------------------------- pure parts


def test_compact_and_describe() -> None:
    assert compact([1, 2, 3, 7, 9, 10]) == [[1, 3], 7, [9, 10]]
    assert compact([]) == []
    many = list(range(1, 40_000, 2))  # 20,000 separate seqs: one range instead
    assert compact(many) == [[1, 39_999]]
    request = ResendRequest("j", "r", (3, 4, 5, 9), 12)
    assert request.input() == {"resend": {"job": "j", "run": "r", "seqs": [[3, 5], 9], "after": 12}}
    assert (
        request.describe()
        == "4 missing seq(s) (3-5, 9) and everything after seq 12 (the manifest never came)"
    )


def test_wanted() -> None:
    envs = wire.Envelopes("j")
    data = os.urandom(3000)
    parts = list(envs.parts(0, data, mime="video/mp4", part_bytes=1000))
    manifest = envs.manifest([wire.ManifestItem(0, "", "ok", "video/mp4", 3000, sha(data), 3)])
    assembler = wire.Assembler("j")
    assert wanted(assembler, 0, "COMPLETED") == ResendRequest("j", None, (), 0)
    for envelope in [parts[0], parts[2]]:
        assembler.feed(envelope)
    assert wanted(assembler, 3, "COMPLETED") == ResendRequest("j", envs.run, (2,), 3)
    assert wanted(assembler, 3, "FAILED") == ResendRequest("j", envs.run, (2,), None)
    assert wanted(assembler, 3, "CANCELLED") is None
    for envelope in [parts[1], *manifest]:
        assembler.feed(envelope)
    assert wanted(assembler, 4, "COMPLETED") is None


def test_gap_recovery_from_the_settings_and_the_crash_hook_off_by_default(tmp_path: Path) -> None:
    settings = RelaySettings(
        data_dir=tmp_path, recovery_attempts=5, recovery_timeout_s=7.5, poll_wait_ms=1500, insecure=True
    )
    recovery = GapRecovery.from_settings(settings)
    assert (recovery.attempts, recovery.timeout_s, recovery.wait_ms) == (5, 7.5, 1500)
    assert crash_after_drain(settings.test_crash_after_drain) is None  # 0: no hook
    assert callable(crash_after_drain(2))
