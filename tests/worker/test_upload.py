"""The worker's uploader against real HTTP servers on 127.0.0.1, and the handler's delivery choices."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from podstream import wire
from tests.worker.support import collect, reassemble
from worker.cache import CacheConfig, OutputCache, Selection
from worker.handler import HandlerConfig, make_handler
from worker.model import Context, File, FunctionModel, Request, Result
from worker.upload import SHA256_HEADER, UploadConfig, Uploader, UploadFailed


@dataclass
class Target:
    """A tiny HTTP server: PUT stores the body (after answering `script` statuses first), GET serves it."""

    script: list[int] = field(default_factory=list)
    objects: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""


@contextlib.contextmanager
def serve(target: Target) -> Iterator[Target]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            target.requests.append(("PUT", self.path, dict(self.headers)))
            status = target.script.pop(0) if target.script else 200
            if status != 200:
                self.send_response(status)
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"nope")
                return
            path = urllib.parse.urlsplit(self.path).path
            target.objects[path] = body
            answer = json.dumps({"url": f"{target.url}/media{path}"}).encode()
            self.send_response(201)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def do_GET(self) -> None:
            target.requests.append(("GET", self.path, dict(self.headers)))
            body = target.objects.get(urllib.parse.urlsplit(self.path).path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    target.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield target
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def uploader(url: str, **changes: Any) -> Uploader:
    return Uploader(UploadConfig(url=url, key="k-1", backoff_s=0.01, **changes), sleep=lambda s: None)


def test_upload_to_a_relay_sends_the_key_and_digest_and_returns_its_url() -> None:
    with serve(Target()) as target:
        up = uploader(target.url)
        data = b"video bytes" * 100
        url = up.upload("job/1", 3, data, mime="video/mp4", sha256=wire.sha256_hex(data))
        up.close()
    method, path, headers = target.requests[0]
    assert (method, path) == ("PUT", "/v1/uploads/job%2F1/3")  # the job id cannot add path segments
    assert headers["Authorization"] == "Bearer k-1"
    assert headers[SHA256_HEADER] == wire.sha256_hex(data)
    assert headers["Content-Type"] == "video/mp4"
    assert target.objects["/v1/uploads/job%2F1/3"] == data
    assert url == f"{target.url}/media/v1/uploads/job%2F1/3"


def test_transient_failures_are_retried_then_given_up() -> None:
    with serve(Target(script=[503, 429])) as target:
        up = uploader(target.url + "/v1/uploads/")
        assert up.upload("j", 0, b"x", mime="", sha256=wire.sha256_hex(b"x")).startswith(target.url)
        assert up.requests == 3 and target.requests[0][1] == "/v1/uploads/j/0"
    with serve(Target(script=[503] * 5)) as target:
        up = uploader(target.url, attempts=3)
        with pytest.raises(UploadFailed, match="HTTP 503"):
            up.upload("j", 0, b"x", mime="", sha256=wire.sha256_hex(b"x"))
        assert up.requests == 3
    # A refusal that will not get better (a bad key, a digest mismatch, too large) is not retried.
    with serve(Target(script=[403])) as target:
        up = uploader(target.url, attempts=3)
        with pytest.raises(UploadFailed, match="HTTP 403"):
            up.upload("j", 0, b"x", mime="", sha256=wire.sha256_hex(b"x"))
        assert up.requests == 1
    # Nobody listening: connection errors are retried too.
    with serve(Target()) as target:
        closed = target.url
    up = uploader(closed, attempts=2)
    with pytest.raises(UploadFailed, match="ConnectError"):
        up.upload("j", 0, b"x", mime="", sha256=wire.sha256_hex(b"x"))
    assert up.requests == 2


def test_an_answer_without_a_usable_url_is_a_failure() -> None:
    class Transport(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return httpx.Response(201, json={"url": "file:///etc/passwd"})

    up = Uploader(UploadConfig(url="http://relay"), client=httpx.Client(transport=Transport()))
    with pytest.raises(UploadFailed, match="usable 'url'"):
        up.upload("j", 0, b"x", mime="", sha256=wire.sha256_hex(b"x"))


def test_upload_to_s3_through_presigned_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    with serve(Target()) as target:
        config = UploadConfig.from_env(
            {"PODSTREAM_UPLOAD_URL": "s3://bucket/out", "PODSTREAM_S3_ENDPOINT_URL": target.url}
        )
        up = Uploader(config)
        data = b"\x89PNG" * 1000
        digest = wire.sha256_hex(data)
        url = up.upload("job-9", 2, data, mime="image/png", sha256=digest)
        key = f"/bucket/out/job-9/00002-{digest[:16]}"
        method, path, headers = target.requests[0]
        put = urllib.parse.urlsplit(path)
        query = urllib.parse.parse_qs(put.query)
        assert (method, put.path) == ("PUT", key)
        assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
        assert query["X-Amz-Credential"][0].startswith("AKIDEXAMPLE/")
        assert "X-Amz-Signature" in query and headers["Content-Type"] == "image/png"
        # The ref carries a presigned GET of the same object, valid an hour by default.
        get = urllib.parse.urlsplit(url)
        assert get.path == key and urllib.parse.parse_qs(get.query)["X-Amz-Expires"] == ["3600"]
        assert httpx.get(url).content == data
        up.close()


def test_config_from_the_environment() -> None:
    cfg = UploadConfig.from_env(
        {
            "PODSTREAM_UPLOAD_URL": "https://relay",
            "PODSTREAM_UPLOAD_KEY": "k",
            "PODSTREAM_UPLOAD_THRESHOLD_BYTES": "10",
        }
    )
    assert (cfg.url, cfg.key, cfg.threshold_bytes) == ("https://relay", "k", 10)
    assert cfg.wants("upload", 1) and cfg.wants("auto", 10) and not cfg.wants("auto", 9)
    assert not cfg.wants("stream", 10**9)
    assert not UploadConfig().wants("upload", 10**9)  # no target: everything streams
    with pytest.raises(ValueError, match="PODSTREAM_UPLOAD_URL"):
        UploadConfig.from_env({"PODSTREAM_UPLOAD_URL": "ftp://x"})
    with pytest.raises(ValueError, match="upload settings"):
        UploadConfig.from_env({"PODSTREAM_UPLOAD_ATTEMPTS": "many"})
    with pytest.raises(ValueError, match="no upload target"):
        Uploader(UploadConfig())


# ------------------------------------------------------------------------------------ the handler


def model(sizes: list[int]) -> FunctionModel:
    def generate(request: Request, ctx: Context) -> Result:
        return File(bytes([request.index]) * sizes[request.index], "video/mp4")

    return FunctionModel(generate, {"text-to-video"})


async def run_job(
    url: str, delivery: str, sizes: list[int], cache: Path, **upload: Any
) -> tuple[list[dict[str, Any]], Any]:
    cfg = HandlerConfig(
        upload=UploadConfig(url=url, key="k", backoff_s=0.01, **upload), cache=CacheConfig(root=cache)
    )
    items = [{"prompt": "p", "id": f"v{i}"} for i in range(len(sizes))]
    job = {"id": "job-u", "input": {"task": "text-to-video", "items": items, "delivery": delivery}}
    envelopes = await collect(make_handler(model(sizes), cfg)(job))
    return envelopes, reassemble(envelopes, "job-u")


async def test_delivery_upload_streams_only_a_ref(tmp_path: Path) -> None:
    with serve(Target()) as target:
        envelopes, got = await run_job(target.url, "upload", [3000, 2000], tmp_path)
    assert got.problems == []
    assert [e["type"] for e in envelopes] == ["ref", "ref", "manifest"]
    assert sorted(got.assembler.refs) == [0, 1]
    assert target.objects["/v1/uploads/job-u/0"] == b"\x00" * 3000
    manifest = got.assembler.manifest
    assert manifest is not None
    assert [(m["status"], m["url"]) for m in manifest.items] == [
        ("ref", f"{target.url}/media/v1/uploads/job-u/0"), ("ref", f"{target.url}/media/v1/uploads/job-u/1"),
    ]  # fmt: skip
    # The refs are in the output cache (a lost ref is resent like any envelope); the files are not needed.
    cached = OutputCache(CacheConfig(root=tmp_path)).open("job-u")
    assert cached is not None and not (cached.directory / "0.bin").exists()
    assert list(cached.envelopes(Selection(after=0))) == envelopes


async def test_a_failed_upload_falls_back_to_streaming_and_nothing_is_lost(tmp_path: Path) -> None:
    with serve(Target(script=[503] * 3)) as target:
        _, got = await run_job(target.url, "upload", [5000, 4000], tmp_path, attempts=3)
    assert got.problems == []
    # Item 0 failed three times and was streamed; item 1 uploaded on the next try.
    assert sorted(got.assembler.completed) == [0] and sorted(got.assembler.refs) == [1]
    assert got.file(0) == b"\x00" * 5000
    assert len([r for r in target.requests if r[1].endswith("/0")]) == 3
    manifest = got.assembler.manifest
    assert manifest is not None and [m["status"] for m in manifest.items] == ["ok", "ref"]
    # The streamed item's bytes are cached for a resend.
    cached = OutputCache(CacheConfig(root=tmp_path)).open("job-u")
    assert cached is not None and (cached.directory / "0.bin").read_bytes() == b"\x00" * 5000


async def test_auto_uploads_only_large_files_and_stream_never(tmp_path: Path) -> None:
    with serve(Target()) as target:
        _, got = await run_job(target.url, "auto", [100, 5000], tmp_path, threshold_bytes=1000)
        assert sorted(got.assembler.completed) == [0] and sorted(got.assembler.refs) == [1]
        _, got = await run_job(target.url, "stream", [100, 5000], tmp_path, threshold_bytes=1000)
        assert sorted(got.assembler.completed) == [0, 1] and not got.assembler.refs
    assert list(target.objects) == ["/v1/uploads/job-u/1"]


async def test_delivery_upload_without_a_target_streams(tmp_path: Path) -> None:
    _, got = await run_job("", "upload", [2000], tmp_path)
    assert got.problems == [] and sorted(got.assembler.completed) == [0]


def test_retries_wait_as_podstream_backoff_says_and_honour_retry_after() -> None:
    """One retry policy in the project (`podstream.backoff`): full jitter under a doubling ceiling, and at
    least the `Retry-After` a busy target asks for."""
    from podstream.backoff import Backoff

    answers = [
        httpx.Response(503),
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(500),
        httpx.Response(201, json={"url": "https://media/x"}),
    ]

    class Transport(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            return answers.pop(0)

    slept: list[float] = []
    config = UploadConfig(url="http://relay", attempts=4, backoff_s=0.5)
    up = Uploader(config, client=httpx.Client(transport=Transport()), sleep=slept.append, rng=lambda: 0.5)
    assert up.upload("j", 0, b"x", mime="", sha256=wire.sha256_hex(b"x")) == "https://media/x"
    backoff = Backoff(base_s=0.5, cap_s=30.0)
    assert slept == [backoff.delay(0, lambda: 0.5), 7.0, backoff.delay(2, lambda: 0.5)] == [0.25, 7.0, 1.0]
