"""podstream.save / asave with the real runpod SDK client (`runpod.Endpoint`, `runpod.AsyncioEndpoint`)
against the emulator, which runs our worker as real SDK worker processes: `python -m worker` with the
tiny pipelines, and a handler wrapped with `podstream.wrap` (tests/worker/wrapped.py) for result.json."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import json
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import podstream
from podstream import wire
from podstream.emulator import Emulator, EmulatorConfig
from podstream.progress import JobIncomplete, JobOutcome
from tests.podstream.emulator.support import API_KEY, endpoint, sdk
from tests.worker.wrapped import payload

ROOT = Path(__file__).resolve().parents[2]

TINY_INPUT = {
    "task": "text-to-image",
    "items": [{"prompt": f"a shape {k}", "id": f"shape{k}"} for k in range(3)],
    "params": {"width": 64, "height": 64, "steps": 2},
    "output": {"part_bytes": 1024},  # about 10 parts a file
}


def _emulator(endpoint_id: str, command: list[str], env: dict[str, str], logs: Path) -> Iterator[Emulator]:
    with Emulator(EmulatorConfig(endpoint_id=endpoint_id, api_key=API_KEY)).serve_in_thread() as emu:
        emu.spawn_workers(1, command, env=env, cwd=ROOT, log_dir=logs)
        yield emu


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """The emulator with one `python -m worker` (the tiny pipelines on CPU)."""
    logs = tmp_path_factory.mktemp("tiny-worker")
    yield from _emulator("tiny", [sys.executable, "-m", "worker"], {"PODSTREAM_MODEL": "tiny"}, logs)


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """The emulator with one worker running a generator handler wrapped with `podstream.wrap`, which yields
    `{"image": base64}` per file and an error dict at `fail_at`."""
    logs = tmp_path_factory.mktemp("wrapped-worker")
    command = [sys.executable, "-m", "tests.worker.wrapped"]
    yield from _emulator("wrapped", command, {"WRAP_MODE": "error_dict", "PYTHONPATH": str(ROOT)}, logs)


@pytest.fixture(autouse=True)
def _no_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    for name in ("tiny", "wrapped"):
        if name in request.fixturenames:
            request.getfixturevalue(name).faults.reset()


def recorded(outputs: Iterable[Any], into: list[Any]) -> Iterator[Any]:
    """`outputs` as they pass, kept in `into`."""
    for output in outputs:
        into.append(output)
        yield output


def manifest_entries(outputs: list[Any]) -> dict[int, dict[str, Any]]:
    return {
        entry["item"]: entry
        for output in outputs
        if output.get("type") == "manifest"
        for entry in output["items"]
    }


def assert_files_match_the_manifest(outcome: JobOutcome, out: Path, outputs: list[Any]) -> None:
    """Every file the manifest lists is saved whole under its final name, and nothing else is in `out`."""
    entries = manifest_entries(outputs)
    assert entries and all(e["status"] == "ok" for e in entries.values())
    saved = {f.item: f for f in outcome.files}
    assert sorted(saved) == sorted(entries)
    for item, entry in entries.items():
        data = saved[item].path.read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["size"], entry["sha256"])
        assert saved[item].path.parent == out and saved[item].id == entry["id"]
    names = {f.path.name for f in outcome.files} | ({"result.json"} if outcome.result else set())
    assert {p.name for p in out.iterdir()} == names  # no .part left behind


def worker_log(emu: Emulator) -> str:
    return "".join(w.log_text()[-3000:] for w in emu.workers)


# ---- a whole job ----------------------------------------------------------------------------------------


def test_save_writes_the_files_of_a_real_workers_job(tiny: Emulator, tmp_path: Path) -> None:
    job = endpoint(tiny).run(TINY_INPUT)
    outputs: list[Any] = []
    outcome = podstream.save(recorded(job.stream(), outputs), out=tmp_path, job=job)
    assert (outcome.ok, outcome.status, outcome.job) == (True, "COMPLETED", job.job_id), worker_log(tiny)
    assert_files_match_the_manifest(outcome, tmp_path, outputs)
    assert [f.path.name for f in outcome.files] == [
        "00000-shape0.png",
        "00001-shape1.png",
        "00002-shape2.png",
    ]
    assert all(f.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in outcome.files)
    assert outcome.result is None  # the built-in worker sends no result


async def test_asave_with_the_asyncio_client(tiny: Emulator, tmp_path: Path) -> None:
    runpod = sdk(tiny)
    async with aiohttp.ClientSession() as session:
        job = await runpod.AsyncioEndpoint(tiny.config.endpoint_id, session).run(TINY_INPUT)
        outputs: list[Any] = []

        async def kept() -> AsyncIterator[Any]:
            async for output in job.stream():
                outputs.append(output)
                yield output

        outcome = await podstream.asave(kept(), out=tmp_path, job=job)
    assert outcome.ok and outcome.status == "COMPLETED" and outcome.job == job.job_id
    assert_files_match_the_manifest(outcome, tmp_path, outputs)


def test_a_wrapped_handlers_result_json_names_its_files(wrapped: Emulator, tmp_path: Path) -> None:
    job = endpoint(wrapped).run({"files": 3, "size": 300_000})
    outputs: list[Any] = []
    outcome = podstream.save(recorded(job.stream(), outputs), out=tmp_path, job=job)
    assert outcome.ok, worker_log(wrapped)
    assert_files_match_the_manifest(outcome, tmp_path, outputs)
    files = sorted(outcome.files, key=lambda f: f.item)
    assert [f.path.read_bytes() for f in files] == [payload(k, 300_000) for k in range(3)]
    assert outcome.result == tmp_path / "result.json"
    # the handler yielded {"image": base64} three times: its result, each file's path in place
    assert json.loads(outcome.result.read_text()) == [{"image": f.path.name} for f in files]


def test_a_job_that_fails_after_its_files_is_failed_only_the_sdk_job_can_tell(
    wrapped: Emulator, tmp_path: Path
) -> None:
    ep = endpoint(wrapped)
    job = ep.run({"files": 4, "size": 5000, "fail_at": 2})  # two files, their manifest, then FAILED
    with pytest.raises(JobIncomplete, match="the job ended FAILED: 2 of 2 files arrived; ") as info:
        podstream.save(job.stream(), out=tmp_path / "with", job=job)
    outcome = info.value.outcome
    assert outcome.status == "FAILED" and outcome.problems == [] and outcome.result is None
    assert [f.path.read_bytes() for f in outcome.files] == [payload(k, 5000) for k in range(2)]
    assert not (tmp_path / "with" / "result.json").exists()
    # the outputs alone: a whole stream (its manifest, nothing missing), so COMPLETED, as documented
    job = ep.run({"files": 4, "size": 5000, "fail_at": 2})
    outcome = podstream.save(job.stream(), out=tmp_path / "without")
    assert outcome.status == "COMPLETED" and len(outcome.files) == 2 and job.status() == "FAILED"


def test_run_sync_gets_no_files_from_a_streaming_worker(tiny: Emulator, tmp_path: Path) -> None:
    outputs = endpoint(tiny).run_sync(TINY_INPUT, timeout=120)
    assert outputs == []  # the files were on /stream only; the job's own output is empty
    with pytest.raises(JobIncomplete) as info:
        podstream.save(outputs, out=tmp_path)
    assert [p.code for p in info.value.outcome.problems] == ["missing_manifest"]
    assert list(tmp_path.iterdir()) == []


# ---- what arrives wrong never becomes a file -----------------------------------------------------------


def corrupt_a_part_of_item_1(outputs: Iterable[Any]) -> Iterator[Any]:
    """A part of item 1 with one byte changed (valid base64 of the right length)."""
    for output in outputs:
        if output.get("type") == "part" and (output["item"], output["part"]) == (1, 3):
            data = bytearray(base64.b64decode(output["data"]))
            data[0] ^= 0xFF
            output = {**output, "data": base64.b64encode(data).decode()}
        yield output


def lose_a_part_of_item_1(outputs: Iterable[Any]) -> Iterator[Any]:
    return (o for o in outputs if not (o.get("type") == "part" and (o["item"], o["part"]) == (1, 3)))


@pytest.mark.parametrize(
    ("damage", "codes"),
    [(corrupt_a_part_of_item_1, {"bad_sha256", "gap"}), (lose_a_part_of_item_1, {"gap", "incomplete"})],
)
def test_a_damaged_item_is_reported_and_never_saved(
    tiny: Emulator, tmp_path: Path, damage: Callable[[Iterable[Any]], Iterator[Any]], codes: set[str]
) -> None:
    job = endpoint(tiny).run(TINY_INPUT)
    outputs: list[Any] = []
    with pytest.raises(JobIncomplete) as info:
        podstream.save(damage(recorded(job.stream(), outputs)), out=tmp_path, job=job)
    outcome = info.value.outcome
    assert outcome.status == "COMPLETED"  # the job did; item 1 did not arrive whole
    assert {p.code for p in outcome.problems} == {*codes, "missing_item"}
    assert "item 1 is in the manifest but never arrived" in [p.message for p in outcome.problems]
    assert sorted(f.item for f in outcome.files) == [0, 2]
    entries = manifest_entries(outputs)
    for file in outcome.files:
        assert hashlib.sha256(file.path.read_bytes()).hexdigest() == entries[file.item]["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000-shape0.png", "00002-shape2.png"]


def test_an_envelope_runpod_lost_is_a_gap_and_result_json_says_null(
    wrapped: Emulator, tmp_path: Path
) -> None:
    wrapped.faults.drop_stream_items = {2}  # file 1's only part: accepted, then lost inside "RunPod"
    job = endpoint(wrapped).run({"files": 3, "size": 3000})
    with pytest.raises(JobIncomplete) as info:
        podstream.save(job.stream(), out=tmp_path, job=job)
    outcome = info.value.outcome
    assert [(p.code, p.message) for p in outcome.problems] == [
        ("gap", "1 envelope(s) never arrived: 2"),
        ("missing_item", "item 1 is in the manifest but never arrived"),
    ]
    files = sorted(outcome.files, key=lambda f: f.item)
    assert [(f.item, f.path.read_bytes()) for f in files] == [(0, payload(0, 3000)), (2, payload(2, 3000))]
    assert outcome.result is not None
    assert json.loads(outcome.result.read_text()) == [
        {"image": files[0].path.name},
        {"image": None},
        {"image": files[1].path.name},
    ]


def test_outputs_that_are_no_envelopes_are_reported(tiny: Emulator, tmp_path: Path) -> None:
    job = endpoint(tiny).run(TINY_INPUT)
    outputs = itertools.chain([{"text": "not ours"}, "a plain string"], job.stream())
    with pytest.raises(JobIncomplete) as info:
        podstream.save(outputs, out=tmp_path, job=job)
    outcome = info.value.outcome
    assert [p.code for p in outcome.problems] == ["unsupported_version", "malformed"]
    assert len(outcome.files) == 3 and outcome.status == "COMPLETED"


# ---- without the SDK ------------------------------------------------------------------------------------


def envelopes(job: str, files: list[bytes]) -> list[dict[str, Any]]:
    env = wire.Envelopes(job)
    out: list[dict[str, Any]] = []
    entries = []
    for item, data in enumerate(files):
        parts = list(env.parts(item, data, mime="image/png", id=f"f{item}", part_bytes=100))
        out += parts
        entries.append(
            wire.ManifestItem(
                item, f"f{item}", "ok", "image/png", len(data), wire.sha256_hex(data), len(parts)
            )
        )
    return out + env.manifest(entries)


def test_a_list_of_outputs_takes_its_job_from_the_first_envelope(tmp_path: Path) -> None:
    stray = envelopes("other", [b"x" * 10])[0]
    outcome = podstream.save([*envelopes("j1", [b"a" * 250, b"b" * 50]), stray], out=tmp_path, check=False)
    assert outcome.job == "j1" and outcome.status == "COMPLETED"
    assert [p.code for p in outcome.problems] == ["wrong_job"] and not outcome.ok
    assert [f.path.read_bytes() for f in outcome.files] == [b"a" * 250, b"b" * 50]


def test_an_unfinished_stream_is_unknown_not_completed(tmp_path: Path) -> None:
    outcome = podstream.save(envelopes("j1", [b"a" * 250])[:-1], out=tmp_path, check=False)
    assert outcome.status == "UNKNOWN" and [p.code for p in outcome.problems] == ["missing_manifest"]
    assert len(outcome.files) == 1  # what did arrive whole is kept


@contextlib.contextmanager
def file_server(data: bytes) -> Iterator[str]:
    """A loopback HTTP server answering every GET with `data`; its base URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_files_uploaded_out_of_band_are_fetched_and_checked(tmp_path: Path, mode: str) -> None:
    data = b"uploaded by the worker" * 500
    with file_server(data) as base:
        env = wire.Envelopes("j1")
        refs = [
            env.ref(
                0, url=f"{base}/0", mime="video/mp4", size=len(data), sha256=wire.sha256_hex(data), id="a"
            ),
            env.ref(1, url=f"{base}/1", mime="video/mp4", size=len(data), sha256="0" * 64, id="b"),
        ]
        entries = [
            wire.ManifestItem(r["item"], r["id"], "ref", r["mime"], r["size"], r["sha256"], 0, r["url"])
            for r in refs
        ]
        outputs = [*refs, *env.manifest(entries)]

        async def each() -> AsyncIterator[Any]:
            for output in outputs:
                yield output

        if mode == "sync":
            outcome = podstream.save(outputs, out=tmp_path, check=False)
        else:
            outcome = asyncio.run(podstream.asave(each(), out=tmp_path, check=False))
    assert [(f.item, f.path.read_bytes()) for f in outcome.files] == [(0, data)]
    assert [p.code for p in outcome.problems] == ["bad_sha256"] and not outcome.ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000-a.mp4"]


def test_sync_and_async_streams_are_not_mixed_up(tmp_path: Path) -> None:
    async def stream() -> AsyncIterator[Any]:
        yield {}

    class AsyncJob:
        job_id = "j"

        async def status(self) -> str:
            return "COMPLETED"

    with pytest.raises(TypeError, match="asave"):
        podstream.save(stream(), out=tmp_path)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="asave"):
        podstream.save([], out=tmp_path, job=AsyncJob())
    with pytest.raises(TypeError, match=r"podstream.save\("):
        asyncio.run(podstream.asave([], out=tmp_path))  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
