"""relay/ingest/results.py through real processes: a wrapped handler's result is journaled by the relay, served by
GET /v1/jobs/{id} with media URLs, and written by `podstream watch` as result.json with file paths."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench._relay_stack import free_port, wait_healthy
from podstream.emulator import Emulator, EmulatorConfig
from relay.api.auth import generate_key, hash_key
from tests.worker.wrapped import payload

ROOT = Path(__file__).resolve().parents[3]
RUNPOD_KEY = "rk"


def test_the_result_is_served_with_media_urls_and_watched_into_result_json(tmp_path: Path) -> None:
    key, port = generate_key(), free_port()
    url = f"http://127.0.0.1:{port}"
    with Emulator(EmulatorConfig(endpoint_id="ep", api_key=RUNPOD_KEY)).serve_in_thread() as emu:
        worker_env = {"WRAP_MODE": "function", "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "tests.worker.wrapped"]
        emu.spawn_workers(1, command, env=worker_env, cwd=ROOT, log_dir=tmp_path)
        argv = [sys.executable, "-m", "podstream", "relay", "--runpod-url", emu.endpoint_url]
        argv += ["--data-dir", str(tmp_path / "data"), "--port", str(port), "--fsync", "never"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PODSTREAM_")}
        # A wrapped handler's input is its own, with no schema: the relay does not check it.
        env.update(
            PODSTREAM_RUNPOD_KEY=RUNPOD_KEY, PODSTREAM_API_KEYS=hash_key(key), PODSTREAM_INPUT_SCHEMA="off"
        )
        with (tmp_path / "relay.log").open("wb") as log:
            relay = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            asyncio.run(wait_healthy(url, timeout_s=60, process=relay, log=tmp_path / "relay.log"))
            deadline = time.monotonic() + 120
            headers = {"Authorization": f"Bearer {key}"}
            with httpx.Client(timeout=30, headers=headers) as client:
                created = client.post(f"{url}/v1/jobs", json={"input": {"files": 3, "size": 700_000}})
                assert created.status_code == 201, created.text
                job = created.json()["id"]
                manifest = client.get(f"{url}/v1/jobs/{job}").json()
                while not manifest["finished"]:
                    assert time.monotonic() < deadline, manifest
                    time.sleep(0.2)
                    manifest = client.get(f"{url}/v1/jobs/{job}").json()
                assert manifest["status"] == "COMPLETED", manifest
                result = manifest["result"]
                assert result["count"] == 3 and len(result["images"]) == 3
                for k, media in enumerate(result["images"]):
                    assert media == manifest["items"][k]["url"]  # the item's signed media URL
                    assert httpx.get(media, timeout=30).content == payload(k, 700_000)  # no header needed
                events = client.get(f"{url}/v1/jobs/{job}/events", params={"format": "json"}).json()
                kinds = [e["k"] for e in events["events"]]
                at = kinds.index("result")  # after every item, before done
                assert kinds.count("result") == 1 and "item" not in kinds[at:] and kinds[-1] == "done"
                assert events["events"][at]["value"]["images"] == [{"$file": k} for k in range(3)]

            out = tmp_path / "watched"
            watch = subprocess.run(
                [sys.executable, "-m", "podstream", "watch", job, "--relay", url, "--key", key, "--out", str(out),
                 "--json", "--quiet"],
                capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
            )  # fmt: skip
            assert watch.returncode == 0, watch.stderr
            assert json.loads(watch.stdout)["result"] == str(out / "result.json")
            written = json.loads((out / "result.json").read_text())
            assert written["count"] == 3
            assert [(out / p).read_bytes() for p in written["images"]] == [
                payload(k, 700_000) for k in range(3)
            ]
        finally:
            relay.terminate()
            relay.wait(30)


def test_a_result_too_large_for_the_journal_is_a_job_level_error() -> None:
    from podstream import wire
    from relay.ingest.results import MAX_RESULT_RECORD_BYTES, result_entry

    kind, fields = result_entry(wire.ResultReceived(9, {"images": [wire.file_ref(0)]}))
    assert (kind, fields) == ("result", {"value": {"images": [{"$file": 0}]}})
    kind, fields = result_entry(wire.ResultReceived(9, "x" * MAX_RESULT_RECORD_BYTES))
    assert kind == "error" and fields["code"] == "result_too_large" and fields["item"] is None
