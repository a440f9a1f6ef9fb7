"""A real local stack for end-to-end tests: the RunPod emulator, a light SDK worker and a relay process.

    with local_stack(tmp_path) as stack:
        stack.emu.faults.drop_stream_items = {2}
        podstream("submit", "--relay", stack.relay, "--key", stack.key, ...)

The worker is the real runpod SDK loop (spawned by the emulator) running a tiny async-generator handler
that streams `input.sizes` items (or one per item of a built-in-shaped input) of sha256-derived bytes
and a manifest: the wire protocol of the real worker, without torch. The relay is a real
`podstream relay` process with an API key, on a free loopback port; everything stops on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench._relay_stack import free_port, wait_healthy
from podstream.emulator import Emulator, EmulatorConfig
from relay.api.auth import generate_key, hash_key

RUNPOD_KEY = "rk"

LIGHT_WORKER = """
import asyncio, hashlib, os, runpod
from podstream import wire

async def handler(job):
    env = wire.Envelopes(job["id"])
    entries = []
    given = job["input"]
    delay = float(given.get("delay_s", 0))
    # {"sizes": [...]}, or the built-in worker's input shape ({"task", "items": [{"id", ...}]})
    items = given.get("items") or []
    sizes = given.get("sizes") or [1024 * (k + 1) for k in range(len(items))]
    ids = [item.get("id") or f"img{k}" for k, item in enumerate(items)] or [f"img{k}" for k in range(len(sizes))]
    for item, size in enumerate(sizes):
        await asyncio.sleep(delay)
        data = hashlib.sha256(str(item).encode()).digest() * (size // 32)
        parts = list(env.parts(item, data, mime="image/png", id=ids[item], part_bytes=100_000))
        for part in parts:
            yield part
        entries.append(wire.ManifestItem(item, ids[item], "ok", "image/png", len(data), wire.sha256_hex(data), len(parts)))
    for page in env.manifest(entries):
        yield page

runpod.serverless.start({"handler": handler, "return_aggregate_stream": False})
"""


#: What the light worker takes: `{"sizes": [...], "delay_s": s}`, or the built-in shape (`items`). Given to
#: the relay (`--input-schema`) and to `podstream submit --input-schema`, as for a worker with its own model.
LIGHT_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Light test worker input",
    "type": "object",
    "properties": {
        "sizes": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
        "delay_s": {"type": "number", "minimum": 0},
        "items": {"type": "array", "minItems": 1},
    },
    "anyOf": [{"required": ["sizes"]}, {"required": ["items"]}],
}


@dataclass
class Stack:
    emu: Emulator
    relay: str  # the relay's http URL
    key: str  # an API key the relay accepts
    tmp: Path
    schema: Path  # LIGHT_SCHEMA as a file

    @property
    def runpod_url(self) -> str:
        return self.emu.endpoint_url

    @property
    def submit_args(self) -> list[str]:
        """`podstream submit` arguments for this stack: relay, key, the light worker's schema."""
        return ["--relay", self.relay, "--key", self.key, "--input-schema", str(self.schema)]


@contextlib.contextmanager
def emulator_with_worker(tmp: Path, workers: int = 1) -> Iterator[Emulator]:
    """The emulator (client key `RUNPOD_KEY`) with `workers` light SDK workers."""
    tmp.mkdir(parents=True, exist_ok=True)
    script = tmp / "light_worker.py"
    script.write_text(LIGHT_WORKER)
    with Emulator(EmulatorConfig(endpoint_id="ep", api_key=RUNPOD_KEY)).serve_in_thread() as emu:
        emu.spawn_workers(workers, [sys.executable, str(script)], log_dir=tmp)
        yield emu


@contextlib.contextmanager
def local_stack(tmp: Path, relay_env: Mapping[str, str] | None = None) -> Iterator[Stack]:
    key = generate_key()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with emulator_with_worker(tmp) as emu:
        schema = tmp / "light_schema.json"
        schema.write_text(json.dumps(LIGHT_SCHEMA))
        argv = [sys.executable, "-m", "podstream", "relay", "--runpod-url", emu.endpoint_url]
        argv += ["--data-dir", str(tmp / "data"), "--port", str(port), "--fsync", "never"]
        argv += ["--input-schema", str(schema)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PODSTREAM_")}
        env.update(
            PODSTREAM_RUNPOD_KEY=RUNPOD_KEY, PODSTREAM_API_KEYS=hash_key(key), PODSTREAM_INPUT_SCHEMA="off"
        )
        env.update(relay_env or {})  # the light worker takes {"sizes": [...]}: no input schema unless asked
        log_path = tmp / "relay.log"
        with log_path.open("wb") as log:
            relay = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            asyncio.run(wait_healthy(url, timeout_s=60, process=relay, log=log_path))
            yield Stack(emu, url, key, tmp, schema)
        finally:
            relay.terminate()
            relay.wait(30)
