"""podstream.pull against a scripted RunPod (httpx.MockTransport): drain, end, retries, errors."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

import podstream
import podstream.puller as pull_mod
from bench._relay_stack import free_port
from podstream import wire
from podstream.backoff import retry_after_seconds
from podstream.progress import JobIncomplete, Observer, SavedFile, StreamProblem, TransferError
from podstream.stream_split import StreamSplitter

BASE = "http://runpod.test/v2/ep"
JOB = "job-1"
FAST = pull_mod.RetryPolicy(attempts=4, base=0.001, cap=0.002)


def make_job(
    sizes: list[int], *, part_bytes: int = 1000, fail: set[int] | None = None
) -> tuple[list[dict[str, Any]], dict[int, bytes]]:
    """The envelopes a worker would stream for files of `sizes` bytes (items in `fail` fail instead)."""
    env = wire.Envelopes(JOB)
    out: list[dict[str, Any]] = []
    files: dict[int, bytes] = {}
    manifest: list[wire.ManifestItem] = []
    for item, size in enumerate(sizes):
        if fail and item in fail:
            out.append(env.error(item, "bad_image", "cannot decode the image", id=f"i{item}"))
            manifest.append(wire.ManifestItem(item, f"i{item}", "error"))
            continue
        data = bytes((item * 7 + k) % 251 for k in range(size))
        files[item] = data
        out.append(env.progress(item, 1, 2))
        parts = list(env.parts(item, data, mime="video/mp4", id=f"i{item}", part_bytes=part_bytes))
        out.extend(parts)
        manifest.append(
            wire.ManifestItem(item, f"i{item}", "ok", "video/mp4", size, wire.sha256_hex(data), len(parts))
        )
    out.extend(env.manifest(manifest))
    return out, files


class ScriptedRunPod:
    """Answers GET /stream with scripted bodies (or callables making a Response), then COMPLETED + empty."""

    def __init__(
        self, script: list[Any], *, final: str = "COMPLETED", status_body: dict[str, Any] | None = None
    ):
        self.script = list(script)
        self.final = final
        self.status_body = status_body or {"id": JOB, "status": final}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == f"/v2/ep/status/{JOB}":
            return httpx.Response(200, json=self.status_body)
        if request.url.path != f"/v2/ep/stream/{JOB}":
            return httpx.Response(404, json={"error": "not found"})
        if not self.script:
            return httpx.Response(200, json={"id": JOB, "status": self.final, "stream": []})
        step = self.script.pop(0)
        if callable(step):
            result: httpx.Response = step(request)
            return result
        return httpx.Response(200, json=step)


def batch(envelopes: list[dict[str, Any]], status: str = "IN_PROGRESS") -> dict[str, Any]:
    return {"id": JOB, "status": status, "stream": [{"output": e} for e in envelopes]}


def client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.Client:
    return httpx.Client(transport=httpx.MockTransport(handler))


class Recorder(Observer):
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def status(self, status: str) -> None:
        self.events.append(("status", status))

    def item_progress(self, item: int, step: int, steps: int) -> None:
        self.events.append(("progress", (item, step, steps)))

    def item_bytes(self, item: int, received: int, size: int) -> None:
        self.events.append(("bytes", (item, received, size)))

    def item_saved(self, file: SavedFile) -> None:
        self.events.append(("saved", file.item))

    def problem(self, problem: StreamProblem) -> None:
        self.events.append(("problem", problem.code))

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        self.events.append(("retry", (attempt, delay, reason)))

    def kinds(self, kind: str) -> list[Any]:
        return [v for k, v in self.events if k == kind]


def run_pull(handler: ScriptedRunPod, out: Path, **kwargs: Any) -> list[SavedFile]:
    with client(handler) as http:
        return list(pull_mod.pull(JOB, runpod_url=BASE, key="k", out=out, client=http, retry=FAST, **kwargs))


def test_drains_until_terminal_and_empty_and_saves_verified_files(tmp_path: Path) -> None:
    envelopes, files = make_job([2500, 0, 999, 4000])
    # Items arrive in several answers; the last ones together with COMPLETED; then one empty COMPLETED.
    script = [
        batch([], "IN_QUEUE"),
        batch(envelopes[:3]),
        batch(envelopes[3:7]),
        batch(envelopes[7:], "COMPLETED"),
    ]
    runpod = ScriptedRunPod(script)
    recorder = Recorder()
    saved = run_pull(runpod, tmp_path, observer=recorder)

    assert [f.item for f in saved] == [0, 1, 2, 3]
    for f in saved:
        assert f.path.read_bytes() == files[f.item]
        assert f.sha256 == hashlib.sha256(files[f.item]).hexdigest()
        assert f.path.parent == tmp_path
    # exactly one call after the COMPLETED-with-items one: the empty one that ends the stream
    assert len(runpod.requests) == 5
    assert all(r.url.params["wait"] == str(pull_mod.DEFAULT_WAIT_MS) for r in runpod.requests)
    assert all(r.headers["authorization"] == "Bearer k" for r in runpod.requests)
    assert recorder.kinds("status") == ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
    assert (0, 1, 2) in recorder.kinds("progress")
    assert (3, 4000, 4000) in recorder.kinds("bytes")
    assert recorder.outcome is not None and recorder.outcome.ok
    assert recorder.outcome.expected_items == 4
    assert not list(tmp_path.glob(".*.part"))


def test_terminal_status_with_items_is_not_the_end(tmp_path: Path) -> None:
    envelopes, _ = make_job([10, 10])
    half = len(envelopes) // 2
    runpod = ScriptedRunPod([batch(envelopes[:half], "COMPLETED"), batch(envelopes[half:], "COMPLETED")])
    assert len(run_pull(runpod, tmp_path)) == 2
    assert len(runpod.requests) == 3


def test_gap_is_reported_after_every_good_file_was_yielded(tmp_path: Path) -> None:
    envelopes, _ = make_job([3000, 500], part_bytes=1000)
    lost = next(e for e in envelopes if e["type"] == "part" and e["item"] == 0 and e["part"] == 1)
    runpod = ScriptedRunPod([batch([e for e in envelopes if e is not lost], "COMPLETED")])
    got: list[SavedFile] = []
    with client(runpod) as http, pytest.raises(JobIncomplete) as info:
        for f in pull_mod.pull(JOB, runpod_url=BASE, key="k", out=tmp_path, client=http, retry=FAST):
            got.append(f)
    assert [f.item for f in got] == [1]
    codes = {p.code for p in info.value.outcome.problems}
    assert {"gap", "incomplete", "missing_item"} <= codes
    assert f"seq {lost['seq']}" in str(info.value) or "gap" in str(info.value)
    assert not list(tmp_path.glob(".*.part")), "the incomplete item's temp file is removed"


def test_corrupt_part_is_reported(tmp_path: Path) -> None:
    envelopes, _ = make_job([1500])
    part = next(e for e in envelopes if e["type"] == "part")
    part["data"] = "!!!" + part["data"][3:]
    runpod = ScriptedRunPod([batch(envelopes, "COMPLETED")])
    with pytest.raises(JobIncomplete) as info:
        run_pull(runpod, tmp_path)
    assert "bad_base64" in {p.code for p in info.value.outcome.problems}


def test_failed_items_make_the_outcome_incomplete_but_the_rest_is_saved(tmp_path: Path) -> None:
    envelopes, _ = make_job([100, 100, 100], fail={1})
    runpod = ScriptedRunPod([batch(envelopes, "COMPLETED")])
    recorder = Recorder()
    saved = run_pull(runpod, tmp_path, observer=recorder, check=False)
    assert [f.item for f in saved] == [0, 2]
    outcome = recorder.outcome
    assert outcome is not None and not outcome.ok and outcome.status == "COMPLETED"
    assert [(f.item, f.code) for f in outcome.failures] == [(1, "bad_image")]
    assert outcome.problems == []


def test_failed_job_reads_its_error_from_status(tmp_path: Path) -> None:
    envelopes, _ = make_job([100, 100])
    runpod = ScriptedRunPod(
        [batch(envelopes[:3])],
        final="FAILED",
        status_body={"id": JOB, "status": "FAILED", "error": "handler: CUDA out of memory"},
    )
    with pytest.raises(JobIncomplete) as info:
        run_pull(runpod, tmp_path)
    outcome = info.value.outcome
    assert outcome.status == "FAILED" and outcome.error == "handler: CUDA out of memory"
    assert [f.item for f in outcome.files] == [0]
    assert "CUDA out of memory" in str(info.value)


def test_retries_429_and_5xx_honouring_retry_after(tmp_path: Path) -> None:
    envelopes, _ = make_job([100])
    runpod = ScriptedRunPod(
        [
            lambda r: httpx.Response(429, headers={"Retry-After": "0"}),
            lambda r: httpx.Response(503),
            lambda r: httpx.Response(502, text="<html>bad gateway</html>"),
            batch(envelopes, "COMPLETED"),
        ]
    )
    recorder = Recorder()
    assert len(run_pull(runpod, tmp_path, observer=recorder)) == 1
    retries = recorder.kinds("retry")
    assert [a for a, _, _ in retries] == [1, 2, 3]
    assert 0.0 <= retries[0][1] <= FAST.base  # Retry-After: 0 sets no floor: the jittered backoff
    assert "429" in retries[0][2] and "503" in retries[1][2]


def test_gives_up_after_the_configured_attempts(tmp_path: Path) -> None:
    runpod = ScriptedRunPod([lambda r: httpx.Response(503)] * 10)
    with pytest.raises(TransferError, match=r"giving up after 4 failed attempts.*503"):
        run_pull(runpod, tmp_path)


@pytest.mark.parametrize(
    ("code", "message"),
    [(401, "rejected the API key"), (403, "rejected the API key"), (404, "not found"), (400, "HTTP 400")],
)
def test_final_errors_end_at_once(tmp_path: Path, code: int, message: str) -> None:
    runpod = ScriptedRunPod([lambda r: httpx.Response(code, json={"error": "nope"})])
    with pytest.raises(TransferError, match=message):
        run_pull(runpod, tmp_path)
    assert len(runpod.requests) == 1


def test_unreachable_server_fails_at_once(tmp_path: Path) -> None:
    port = free_port()  # nothing listens on it
    with pytest.raises(TransferError, match="cannot reach"):
        list(
            pull_mod.pull(JOB, runpod_url=f"http://127.0.0.1:{port}/v2/ep", key="k", out=tmp_path, retry=FAST)
        )


def test_not_a_status_answer_is_an_error(tmp_path: Path) -> None:
    runpod = ScriptedRunPod([{"hello": "world"}])
    with pytest.raises(TransferError, match="not a job status"):
        run_pull(runpod, tmp_path)


def test_non_envelope_outputs_are_reported_not_raised(tmp_path: Path) -> None:
    runpod = ScriptedRunPod([batch([{"text": "hello"}, "plain string"], "COMPLETED")])  # type: ignore[list-item]
    with pytest.raises(JobIncomplete) as info:
        run_pull(runpod, tmp_path)
    codes = [p.code for p in info.value.outcome.problems]
    assert codes == ["unsupported_version", "malformed", "missing_manifest"]


def test_ref_items_are_fetched_and_verified(tmp_path: Path) -> None:
    env = wire.Envelopes(JOB)
    data = b"uploaded out of band" * 100
    good = env.ref(
        0, url="http://files.test/0", mime="image/png", size=len(data), sha256=wire.sha256_hex(data), id="a"
    )
    bad = env.ref(1, url="http://files.test/1", mime="image/png", size=len(data), sha256="0" * 64, id="b")
    manifest = env.manifest(
        [
            wire.ManifestItem(
                0, "a", "ref", "image/png", len(data), wire.sha256_hex(data), 0, "http://files.test/0"
            ),
            wire.ManifestItem(1, "b", "ref", "image/png", len(data), "0" * 64, 0, "http://files.test/1"),
        ]
    )
    runpod = ScriptedRunPod([batch([good, bad, *manifest], "COMPLETED")])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "files.test":
            return httpx.Response(200, content=data)
        return runpod(request)

    with httpx.Client(transport=httpx.MockTransport(handler)) as http, pytest.raises(JobIncomplete) as info:
        saved = []
        for f in pull_mod.pull(JOB, runpod_url=BASE, key="k", out=tmp_path, client=http, retry=FAST):
            saved.append(f)
    assert [f.item for f in saved] == [0]
    assert saved[0].path.read_bytes() == data and saved[0].path.name == "00000-a.png"
    assert [p.code for p in info.value.outcome.problems] == ["bad_sha256"]


def test_apull_is_the_same_on_asyncio(tmp_path: Path) -> None:
    envelopes, files = make_job([1200, 300])
    runpod = ScriptedRunPod(
        [lambda r: httpx.Response(500), batch(envelopes[:2]), batch(envelopes[2:], "COMPLETED")]
    )

    async def main() -> list[SavedFile]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(runpod)) as http:
            stream = pull_mod.apull(JOB, runpod_url=BASE, key="k", out=tmp_path, client=http, retry=FAST)
            return [f async for f in stream]

    saved = asyncio.run(main())
    assert {f.item: f.path.read_bytes() for f in saved} == files


class TricklingRunPod:
    """A real HTTP server on 127.0.0.1 whose first /stream answer is sent in two writes: `head`, then, only
    once `release` is set (or after a safety wait), `tail`; later /stream answers are COMPLETED and empty.
    With `cut`, the connection is closed after `head` instead (the answer breaks off)."""

    def __init__(self, head: bytes, tail: bytes, *, cut: bool = False) -> None:
        self.release = threading.Event()
        self.tail_sent = threading.Event()
        self.stream_requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                if not self.path.startswith(f"/v2/ep/stream/{JOB}"):
                    self.send_error(404)
                    return
                owner.stream_requests += 1
                if owner.stream_requests > 1:
                    body = json.dumps({"id": JOB, "status": "COMPLETED", "stream": []}).encode()
                    head_, tail_ = body, b""
                else:
                    head_, tail_ = head, tail
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(head_) + len(tail_)))
                self.end_headers()
                self.wfile.write(head_)
                self.wfile.flush()
                if not tail_:
                    return
                if cut:
                    self.close_connection = True
                    return
                owner.release.wait(30)  # a safety net only: the test sets it as soon as it has seen a file
                owner.tail_sent.set()
                self.wfile.write(tail_)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2/ep"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> TricklingRunPod:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def split_answer(envelopes: list[dict[str, Any]], at: int) -> tuple[bytes, bytes]:
    """A COMPLETED /stream answer of `envelopes`, cut in two bytes strings after envelope `at`."""
    body = json.dumps({"id": JOB, "status": "COMPLETED", "stream": [{"output": e} for e in envelopes]})
    cut = body.index(json.dumps({"output": envelopes[at]})) + len(json.dumps({"output": envelopes[at]}))
    return body[:cut].encode(), body[cut:].encode()


def test_first_file_is_written_before_the_answer_has_arrived(tmp_path: Path) -> None:
    envelopes, files = make_job([5000, 3000])
    last_of_item_0 = max(i for i, e in enumerate(envelopes) if e.get("item") == 0 and e["type"] == "part")
    head, tail = split_answer(envelopes, last_of_item_0 + 1)  # one more: the splitter needs the comma
    with TricklingRunPod(head, tail) as runpod:
        seen: list[tuple[int, bool, bytes]] = []
        for saved in pull_mod.pull(JOB, runpod_url=runpod.url, key="k", out=tmp_path, retry=FAST):
            seen.append((saved.item, runpod.tail_sent.is_set(), saved.path.read_bytes()))
            runpod.release.set()
    assert seen[0] == (0, False, files[0])  # on disk, verified, while the answer's tail was still unsent
    assert {item: data for item, _, data in seen} == files
    assert runpod.stream_requests == 2  # one answer held everything; the next was COMPLETED and empty


def test_apull_writes_the_first_file_before_the_answer_has_arrived(tmp_path: Path) -> None:
    envelopes, files = make_job([5000, 3000])
    last_of_item_0 = max(i for i, e in enumerate(envelopes) if e.get("item") == 0 and e["type"] == "part")
    head, tail = split_answer(envelopes, last_of_item_0 + 1)

    async def main(runpod: TricklingRunPod) -> list[tuple[int, bool, bytes]]:
        seen = []
        async for saved in pull_mod.apull(JOB, runpod_url=runpod.url, key="k", out=tmp_path, retry=FAST):
            seen.append((saved.item, runpod.tail_sent.is_set(), saved.path.read_bytes()))
            runpod.release.set()
        return seen

    with TricklingRunPod(head, tail) as runpod:
        seen = asyncio.run(main(runpod))
    assert seen[0] == (0, False, files[0])
    assert {item: data for item, _, data in seen} == files


def test_an_answer_cut_off_midway_keeps_what_arrived_and_polls_again(tmp_path: Path) -> None:
    """RunPod drained what it sent: the entries before the cut stand, the pull does not count it as a
    failed attempt, and the rest (never to come) is reported as missing at the end."""
    envelopes, files = make_job([5000, 3000])
    last_of_item_0 = max(i for i, e in enumerate(envelopes) if e.get("item") == 0 and e["type"] == "part")
    head, tail = split_answer(envelopes, last_of_item_0 + 1)
    recorder = Recorder()
    with TricklingRunPod(head, tail, cut=True) as runpod, pytest.raises(JobIncomplete) as info:
        saved = []
        stream = pull_mod.pull(
            JOB, runpod_url=runpod.url, key="k", out=tmp_path, retry=FAST, observer=recorder
        )
        for f in stream:
            saved.append(f)
    assert [(f.item, f.path.read_bytes()) for f in saved] == [(0, files[0])]
    assert recorder.kinds("retry") == []
    assert runpod.stream_requests == 2
    assert "missing_manifest" in {p.code for p in info.value.outcome.problems}


def test_malformed_answer_after_entries_keeps_them(tmp_path: Path) -> None:
    envelopes, files = make_job([1200, 300])
    head, _ = split_answer(envelopes, 3)  # entries 0..3, then a broken one and no end
    runpod = ScriptedRunPod(
        [lambda r: httpx.Response(200, content=head + b", garbage"), batch(envelopes[4:], "COMPLETED")]
    )
    saved = run_pull(runpod, tmp_path)
    assert {f.item: f.path.read_bytes() for f in saved} == files


def test_non_json_answer_without_entries_is_retried(tmp_path: Path) -> None:
    envelopes, files = make_job([1200])
    recorder = Recorder()
    runpod = ScriptedRunPod(
        [lambda r: httpx.Response(200, content=b"<html>busy</html>"), batch(envelopes, "COMPLETED")]
    )
    saved = run_pull(runpod, tmp_path, observer=recorder)
    assert {f.item: f.path.read_bytes() for f in saved} == files
    assert [reason for _, _, reason in recorder.kinds("retry")] == ["GET /stream: answer is not JSON"]


def test_retry_after_parsing_and_policy() -> None:
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0
    policy = pull_mod.RetryPolicy(base=1.0, cap=4.0, max_retry_after=60)
    assert policy.delay(3, retry_after=500) == 60
    assert all(0 <= policy.delay(n) <= min(4.0, 2 ** (n - 1)) for n in range(1, 10) for _ in range(20))


def test_endpoint_url() -> None:
    assert pull_mod.endpoint_url("http://127.0.0.1:9/v2/x/") == "http://127.0.0.1:9/v2/x"
    assert pull_mod.endpoint_url(None, "abc") == "https://api.runpod.ai/v2/abc"
    with pytest.raises(ValueError):
        pull_mod.endpoint_url("ftp://x")
    with pytest.raises(ValueError):
        pull_mod.endpoint_url(None, None)


def test_run_job_posts_the_input_and_retries_only_429() -> None:
    seen: list[dict[str, Any]] = []
    answers = [
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.Response(200, json={"id": "j9", "status": "IN_QUEUE"}),
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return answers.pop(0)

    with client(handler) as http:
        job = pull_mod.run_job({"task": "text-to-image"}, runpod_url=BASE, key="k", client=http, retry=FAST)
    assert job == "j9" and seen == [{"input": {"task": "text-to-image"}}] * 2

    with (
        client(lambda r: httpx.Response(503)) as http,
        pytest.raises(TransferError, match="may or may not exist"),
    ):
        pull_mod.run_job({}, runpod_url=BASE, key="k", client=http)


# ---------------------------------------------------------------------- against the emulator, real SDK loop

HANDLER = """
import hashlib, os, runpod
from podstream import wire
from podstream.backoff import retry_after_seconds

async def handler(job):
    env = wire.Envelopes(job["id"])
    entries = []
    for item, size in enumerate(job["input"]["sizes"]):
        data = hashlib.sha256(str(item).encode()).digest() * (size // 32) + bytes(size % 32)
        parts = list(env.parts(item, data, mime="image/png", id=f"f{item}", part_bytes=300_000))
        for part in parts:
            yield part
        entries.append(wire.ManifestItem(item, f"f{item}", "ok", "image/png", size, wire.sha256_hex(data), len(parts)))
    for page in env.manifest(entries):
        yield page

runpod.serverless.start({"handler": handler, "return_aggregate_stream": False})
"""


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from podstream.emulator import Emulator, EmulatorConfig

    script = tmp_path_factory.mktemp("worker") / "handler.py"
    script.write_text(HANDLER)
    with Emulator(EmulatorConfig(endpoint_id="ep", api_key="secret")).serve_in_thread() as emu:
        emu.spawn_workers(1, [sys.executable, str(script)], log_dir=script.parent)
        yield emu


def expected_bytes(item: int, size: int) -> bytes:
    return hashlib.sha256(str(item).encode()).digest() * (size // 32) + bytes(size % 32)


def test_pull_from_the_emulator_with_the_real_sdk_worker(emulator: Any, tmp_path: Path) -> None:
    emulator.faults.reset()
    emulator.faults.stream_responses = [429, 503]
    sizes = [1_000_000, 10, 650_000]
    job = pull_mod.run_job({"sizes": sizes}, runpod_url=emulator.endpoint_url, key="secret")
    recorder = Recorder()
    saved = list(
        pull_mod.pull(
            job,
            runpod_url=emulator.endpoint_url,
            key="secret",
            out=tmp_path,
            wait_ms=5000,
            observer=recorder,
            retry=FAST,
        )
    )
    assert {f.item: f.path.read_bytes() for f in saved} == {
        k: expected_bytes(k, s) for k, s in enumerate(sizes)
    }
    assert len(recorder.kinds("retry")) == 2
    stats = emulator.stats()["routes"]
    assert stats["job-stream"]["max_request_bytes"] <= wire.DEFAULT_BODY_BUDGET


def test_pull_reports_what_the_sdk_dropped(emulator: Any, tmp_path: Path) -> None:
    emulator.faults.reset()
    emulator.faults.reject_stream_items = {2}  # answered 400: the SDK logs it and goes on, as in production
    job = pull_mod.run_job({"sizes": [700_000, 20]}, runpod_url=emulator.endpoint_url, key="secret")
    with pytest.raises(JobIncomplete) as info:
        list(pull_mod.pull(job, runpod_url=emulator.endpoint_url, key="secret", out=tmp_path, retry=FAST))
    outcome = info.value.outcome
    assert outcome.status == "COMPLETED"
    assert [f.item for f in outcome.files] == [1]
    assert {"gap", "incomplete", "missing_item"} <= {p.code for p in outcome.problems}


def test_pull_with_a_wrong_key_or_unknown_job(emulator: Any, tmp_path: Path) -> None:
    emulator.faults.reset()
    with pytest.raises(TransferError, match="rejected the API key"):
        list(pull_mod.pull("nope", runpod_url=emulator.endpoint_url, key="wrong", out=tmp_path))
    with pytest.raises(TransferError, match="not found"):
        list(pull_mod.pull("nope", runpod_url=emulator.endpoint_url, key="secret", out=tmp_path))


def test_package_api_is_lazy_and_callable(tmp_path: Path) -> None:
    code = (
        "import sys, podstream\n"
        "assert not {'httpx', 'rich', 'torch', 'websockets'} & set(sys.modules), sorted(sys.modules)\n"
        "assert callable(podstream.pull) and callable(podstream.watch)\n"
        "import podstream.puller, podstream.watcher\n"
        "assert podstream.pull is podstream.puller.pull and podstream.watch is podstream.watcher.watch\n"
        "assert podstream.apull is podstream.puller.apull and podstream.awatch is podstream.watcher.awatch\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    envelopes, files = make_job([10])
    runpod = ScriptedRunPod([batch(envelopes, "COMPLETED")])
    with client(runpod) as http:
        saved = list(podstream.pull(JOB, runpod_url=BASE, key="k", out=tmp_path, client=http))
    assert saved[0].path.read_bytes() == files[0]


# ---- the step machine alone: answers fed by hand, no client and no sockets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def machine(out: Path, observer: Observer | None = None, clock: Clock | None = None) -> pull_mod.PullSteps:
    return pull_mod.PullSteps(
        JOB, runpod_url=BASE, key="k", out=out, wait_ms=5000, observer=observer, retry=FAST,
        clock=clock or Clock(),
    )  # fmt: skip


def feed_answer(
    steps: pull_mod.PullSteps, body: dict[str, Any], piece: int = 700
) -> list[SavedFile | wire.ItemRef]:
    """What a driver does with a whole 200 answer: split it as it arrives, feed the entries, end it."""
    splitter = StreamSplitter()
    raw = json.dumps(body).encode()
    got: list[SavedFile | wire.ItemRef] = []
    for start in range(0, len(raw), piece):
        texts = splitter.feed(raw[start : start + piece])
        if texts:
            got += steps.entries(splitter.status, texts)
    steps.answer_ended(pull_mod.AnswerEnd(splitter=splitter))
    return got


def test_steps_poll_the_stream_until_it_ends_then_finish(tmp_path: Path) -> None:
    envelopes, files = make_job([1500, 10])
    clock = Clock()
    steps = machine(tmp_path, clock=clock)
    poll = steps.next()
    assert poll == pull_mod.Poll(f"{BASE}/stream/{JOB}", {"Authorization": "Bearer k"}, {"wait": 5000})
    clock.now += 1  # each poll below takes time: no idle pause follows it
    got = feed_answer(steps, batch(envelopes[:4]))
    assert [f.item for f in got if isinstance(f, SavedFile)] == [0]
    assert steps.next() == poll
    clock.now += 1
    got = feed_answer(steps, batch(envelopes[4:], "COMPLETED"))  # the last items come with COMPLETED
    assert [f.item for f in got if isinstance(f, SavedFile)] == [1]
    assert steps.next() == poll  # terminal, but not yet an empty answer
    clock.now += 1
    assert feed_answer(steps, batch([], "COMPLETED")) == []
    finished = steps.next()
    assert isinstance(finished, pull_mod.Finished) and finished.outcome.ok
    assert steps.next() is finished  # finished once
    assert {f.item: f.path.read_bytes() for f in finished.outcome.files} == files
    steps.close()


def test_steps_pause_between_quick_empty_answers_only(tmp_path: Path) -> None:
    clock, observer = Clock(), Recorder()
    steps = machine(tmp_path, observer, clock)
    assert isinstance(steps.next(), pull_mod.Poll)
    feed_answer(steps, batch([]))  # empty, and at once: a server that does not hold the request
    pause = steps.next()
    assert isinstance(pause, pull_mod.Pause) and 0 < pause.seconds < 1
    assert observer.kinds("retry") == []  # a pause, not a retry
    assert isinstance(steps.next(), pull_mod.Poll)
    clock.now += 5  # a long-poll that waited, then came back empty
    feed_answer(steps, batch([]))
    assert isinstance(steps.next(), pull_mod.Poll)


def test_steps_retry_transient_answers_with_backoff_then_give_up(tmp_path: Path) -> None:
    observer = Recorder()
    steps = machine(tmp_path, observer)
    for attempt in (1, 2, 3):
        assert isinstance(steps.next(), pull_mod.Poll)
        busy = httpx.Response(429, headers={"Retry-After": "2"})
        steps.answer_ended(pull_mod.AnswerEnd(response=busy))
        pause = steps.next()
        assert isinstance(pause, pull_mod.Pause) and pause.seconds >= 2.0  # never shorter than Retry-After
        assert observer.kinds("retry")[-1] == (attempt, pause.seconds, "GET /stream: HTTP 429")
    assert isinstance(steps.next(), pull_mod.Poll)
    with pytest.raises(TransferError, match=r"after 4 failed attempts in a row; last: GET /stream: HTTP 503"):
        steps.answer_ended(pull_mod.AnswerEnd(response=httpx.Response(503)))


def test_steps_a_success_starts_the_failure_count_again(tmp_path: Path) -> None:
    steps = machine(tmp_path)
    for _ in range(3):
        for _ in range(3):  # three failures in a row, one short of giving up
            steps.next()
            steps.answer_ended(pull_mod.AnswerEnd(response=httpx.Response(502)))
            assert isinstance(steps.next(), pull_mod.Pause)
        assert isinstance(steps.next(), pull_mod.Poll)
        feed_answer(steps, batch([]))


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (httpx.Response(401), r"rejected the API key \(HTTP 401\) for GET /stream"),
        (httpx.Response(404), r"GET /stream: not found \(HTTP 404\)"),
        (httpx.Response(400, text="bad wait"), r"GET /stream: HTTP 400: bad wait"),
    ],
)
def test_steps_final_answers_raise(tmp_path: Path, answer: httpx.Response, message: str) -> None:
    steps = machine(tmp_path)
    steps.next()
    with pytest.raises(TransferError, match=message):
        steps.answer_ended(pull_mod.AnswerEnd(response=answer))


def test_steps_a_connection_refused_is_final_only_before_runpod_answered(tmp_path: Path) -> None:
    refused = httpx.ConnectError("refused")
    steps = machine(tmp_path)
    steps.next()
    with pytest.raises(TransferError, match=f"cannot reach {BASE}/stream/{JOB}: refused"):
        steps.answer_ended(pull_mod.AnswerEnd(error=refused))
    steps = machine(tmp_path)
    steps.next()
    feed_answer(steps, batch([]))
    steps.next()
    steps.answer_ended(pull_mod.AnswerEnd(error=refused))
    assert isinstance(steps.next(), pull_mod.Pause)
    steps = machine(tmp_path)
    steps.next()
    with pytest.raises(RuntimeError, match="a bug"):  # not the network's doing: raised as it is
        steps.answer_ended(pull_mod.AnswerEnd(error=RuntimeError("a bug")))


def test_steps_an_answer_cut_off_after_entries_keeps_them_and_polls_again(tmp_path: Path) -> None:
    envelopes, files = make_job([10, 10])
    steps = machine(tmp_path)
    steps.next()
    splitter = StreamSplitter()
    raw = json.dumps(batch(envelopes)).encode()
    got = steps.entries("", splitter.feed(raw[: len(raw) // 2]))
    assert [f.path.read_bytes() for f in got if isinstance(f, SavedFile)] == [files[0]]
    steps.answer_ended(pull_mod.AnswerEnd(error=httpx.ReadError("reset")))
    assert isinstance(steps.next(), pull_mod.Poll)  # no backoff: RunPod drained what arrived
    assert steps.drain.polls == 1


def test_steps_read_a_failed_jobs_error_from_status_retrying_it(tmp_path: Path) -> None:
    envelopes, _ = make_job([10])
    observer = Recorder()
    steps = machine(tmp_path, observer)
    steps.next()
    feed_answer(steps, batch(envelopes[:-1], "FAILED"))
    steps.next()
    feed_answer(steps, batch([], "FAILED"))
    call = steps.next()
    assert call == pull_mod.Call("GET", f"{BASE}/status/{JOB}", {"Authorization": "Bearer k"})
    steps.answered(httpx.ReadTimeout("slow"))
    assert isinstance(steps.next(), pull_mod.Pause)
    assert observer.kinds("retry")[-1][2] == "GET /status: ReadTimeout slow"
    assert steps.next() == call
    steps.answered(httpx.Response(200, json={"id": JOB, "status": "FAILED", "error": "CUDA out of memory"}))
    finished = steps.next()
    assert isinstance(finished, pull_mod.Finished)
    assert finished.outcome.status == "FAILED" and finished.outcome.error == "CUDA out of memory"
    assert not finished.outcome.ok


def test_steps_check_the_wait_and_the_url_before_any_request(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="wait_ms"):
        pull_mod.PullSteps(JOB, runpod_url=BASE, key=None, out=tmp_path, wait_ms=10)
    with pytest.raises(ValueError, match="not an http"):
        pull_mod.PullSteps(JOB, runpod_url="ftp://x", key=None, out=tmp_path)
    poll = pull_mod.PullSteps(JOB, runpod_url=BASE, key=None, out=tmp_path).next()
    assert isinstance(poll, pull_mod.Poll) and poll.headers == {}
