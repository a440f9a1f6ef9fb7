"""A batch's images travel by reference, end to end, with the seeds' own workload (100 images -> 100 videos):
local files -> `podstream submit --images` (staged on the relay) -> relay -> RunPod emulator -> the real
worker (runpod SDK loop, tiny pipelines on CPU), which fetches each image from the relay at its signed URL
and checks its sha256 -> 100 videos saved and verified. No `/run` body comes near RunPod's 10 MB cap."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from bench._relay_stack import free_port, wait_healthy
from podstream.emulator import Emulator, EmulatorConfig
from relay.api.auth import generate_key, hash_key
from tests.relay.conftest import cluster_backend
from tests.relay.storage.conftest import AWS_ENV

RUNPOD_KEY = "rk"
ROOT = Path(__file__).resolve().parents[1]


def noise_png(seed: int, side: int = 256) -> bytes:
    """A PNG of random pixels (about 200 KB at 256x256: noise does not compress)."""
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), random.Random(seed).randbytes(side * side * 3)).save(out, "PNG")
    return out.getvalue()


@dataclass
class Stack:
    emu: Emulator
    relay: str
    key: str
    #: Where the worker fetches staged inputs from: the relay, or the bucket in cluster mode.
    inputs_at: str


@pytest.fixture(params=["disk", "cluster"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    """The emulator with one real tiny worker, and a relay process checking the built-in input schema: on
    local disk, or as a cluster replica (redis-server + moto's S3) with the inputs in the bucket."""
    key = generate_key()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODSTREAM_")}
    relay_env = {**env, "PODSTREAM_RUNPOD_KEY": RUNPOD_KEY, "PODSTREAM_API_KEYS": hash_key(key)}
    relay_env["PODSTREAM_TOKEN_SECRET"] = "s" * 48  # replicas share it (cluster mode asks for one)
    allowed = [f"127.0.0.1:{port}"]
    with contextlib.ExitStack() as stack:
        inputs_at = url
        if request.param == "cluster":
            cluster = stack.enter_context(cluster_backend(tmp_path))
            relay_env.update(
                AWS_ENV, PODSTREAM_REDIS_URL=cluster.redis_url, PODSTREAM_MEDIA_URL=cluster.media_url
            )
            relay_env["PODSTREAM_S3_ENDPOINT_URL"] = inputs_at = cluster.s3_endpoint_url
            allowed.append(cluster.s3_endpoint_url.removeprefix("http://"))
        worker_env = {**env, "PODSTREAM_MODEL": "tiny", "PODSTREAM_INPUT_HOSTS": ",".join(allowed)}
        emu = stack.enter_context(
            Emulator(EmulatorConfig(endpoint_id="ep", api_key=RUNPOD_KEY)).serve_in_thread()
        )
        emu.spawn_workers(1, [sys.executable, "-m", "worker"], env=worker_env, cwd=ROOT, log_dir=tmp_path)
        argv = [
            sys.executable,
            "-m",
            "podstream",
            "relay",
            "--runpod-url",
            emu.endpoint_url,
            "--port",
            str(port),
        ]
        argv += ["--data-dir", str(tmp_path / "relay-data"), "--fsync", "never"]
        log = tmp_path / "relay.log"
        with log.open("wb") as out:
            relay = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=relay_env, cwd=ROOT)
        try:
            asyncio.run(wait_healthy(url, timeout_s=60, process=relay, log=log))
            yield Stack(emu, url, key, inputs_at)
        finally:
            relay.terminate()
            relay.wait(30)


def test_a_hundred_images_become_a_hundred_videos(tmp_path: Path, stack: Stack) -> None:
    emu, relay, key = stack.emu, stack.relay, stack.key
    count = 100 if stack.inputs_at == relay else 30  # cluster mode: the same path, fewer items
    images = tmp_path / "imgs"
    images.mkdir()
    paths = []
    for k in range(count):
        path = images / f"img{k:03d}.png"
        path.write_bytes(noise_png(k))
        paths.append(path)
    assert 150_000 < sum(p.stat().st_size for p in paths) / count < 250_000
    out = tmp_path / "out"
    command = [sys.executable, "-m", "podstream", "submit", "--relay", relay, "--key", key, "--images"]
    command += [str(p) for p in paths]
    command += [
        "--out",
        str(out),
        "--frames",
        "4",
        "--width",
        "64",
        "--height",
        "64",
        "--steps",
        "1",
        "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout)
    job = outcome["job"]
    assert outcome["ok"] and len(outcome["files"]) == count, outcome["failures"]

    run = emu.stats()["routes"]["run"]
    assert run["requests"] == 1 and run["max_request_bytes"] < 1_000_000, run  # 20 MB of images, by reference
    sent = emu.job(job)
    assert sent is not None
    # What RunPod got for item i names image i's bytes, which the worker checks what it fetched against.
    assert sent["input"]["inputs"]["url"].startswith(relay + "/v1/inputs/")  # in the bucket: a redirect there
    for k, (item, path) in enumerate(zip(sent["input"]["items"], paths, strict=True)):
        assert item["id"] == path.stem, k
        assert item["image"] == "input:" + hashlib.sha256(path.read_bytes()).hexdigest(), k
    saved = sorted((out / job).glob("*.mp4"))
    assert [p.name.split("-", 1)[1] for p in saved] == [f"{p.stem}.mp4" for p in paths]
    for video in saved:
        assert video.read_bytes()[4:8] == b"ftyp"
