"""podstream.uploads: staging local images on a relay, against a scripted relay (httpx.MockTransport)."""

from __future__ import annotations

import hashlib
import io
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import podstream.submit as submit_mod
import podstream.uploads as uploads_mod
from podstream.backoff import Backoff
from podstream.progress import TransferError, UploadBar, UploadProgress, human_bytes, upload_summary
from podstream.submit import InputError
from podstream.uploads import (
    CHUNK_BYTES,
    LocalInput,
    UploadedInput,
    read_input,
    upload_inputs,
)

NO_WAIT = Backoff(base_s=0, cap_s=0)
RELAY = "http://relay:8700"


def png(path: Path, colour: tuple[int, int, int] = (200, 30, 60), size: tuple[int, int] = (16, 12)) -> Path:
    Image.new("RGB", size, colour).save(path)
    return path


class FakeRelay:
    """The input routes of a relay, in memory: POST /v1/inputs/lookup, HEAD/GET /v1/inputs/<sha256>, PUT
    /v1/inputs. `lookups=False`: a relay older than the lookup route (405 there, as such a relay answers).

    `script` answers a request first when it returns a response (faults); every request is recorded, and
    the sha256 each lookup asked about in `looked_up`."""

    def __init__(
        self, script: Callable[[httpx.Request], httpx.Response | None] | None = None, *, lookups: bool = True
    ) -> None:
        self.held: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.looked_up: list[list[str]] = []
        self.put_times: list[float] = []
        self.lookups = lookups
        self.script = script
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay_s = 0.0
        self._lock = threading.Lock()

    def handler(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        with self._lock:
            self.requests.append((request.method, request.url.path))
            if request.method == "PUT":
                self.put_times.append(time.monotonic())
            uploading = request.method == "PUT"
            self.in_flight += uploading  # uploads at once (a lookup may run beside them)
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay_s)
            scripted = self.script(request) if self.script else None
            return scripted if scripted is not None else self._answer(request, body)
        finally:
            with self._lock:
                self.in_flight -= uploading

    def _answer(self, request: httpx.Request, body: bytes) -> httpx.Response:
        if request.url.path == "/v1/inputs/lookup":
            if not self.lookups or request.method != "POST":
                return error(405, "method_not_allowed", "Method Not Allowed")
            asked = json.loads(body)["sha256"]
            assert len(asked) <= 1000, len(asked)
            self.looked_up.append(asked)
            held = {sha: described(sha, len(self.held[sha])) for sha in asked if sha in self.held}
            return httpx.Response(200, json={"held": held, "missing": [s for s in asked if s not in held]})
        if request.method == "PUT":
            sha = hashlib.sha256(body).hexdigest()
            if request.headers.get("x-podstream-sha256") != sha:
                return error(422, "sha256_mismatch", "the body does not match X-Podstream-Sha256")
            status = 200 if sha in self.held else 201
            self.held[sha] = body
            return httpx.Response(status, json=described(sha, len(body)))
        sha = request.url.path.rsplit("/", 1)[-1]
        if sha not in self.held:
            return (
                httpx.Response(404) if request.method == "HEAD" else error(404, "not_found", "no such input")
            )
        return httpx.Response(
            200, json=None if request.method == "HEAD" else described(sha, len(self.held[sha]))
        )

    def puts(self) -> int:
        return sum(method == "PUT" for method, _ in self.requests)

    def asked(self) -> list[str]:
        """Every sha256 the lookups asked about, in order."""
        return [sha for batch in self.looked_up for sha in batch]

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))


def described(sha: str, size: int) -> dict[str, Any]:
    return {
        "ref": f"input:{sha}",
        "sha256": sha,
        "bytes": size,
        "mime": "image/png",
        "url": f"{RELAY}/v1/inputs/anonymous/{sha}?exp=1&sig=x",
        "expires_at": 1234.5,
    }


def error(status: int, code: str, message: str) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message}})


def upload(relay: FakeRelay, paths: list[Path], **kwargs: Any) -> list[UploadedInput]:
    with relay.client() as client:
        return upload_inputs(paths, relay=RELAY, key="k", client=client, backoff=NO_WAIT, **kwargs)


# ---- reading local files


def test_read_input_hashes_and_types_the_file(tmp_path: Path) -> None:
    path = png(tmp_path / "cat.png")
    local = read_input(path)
    data = path.read_bytes()
    assert local == LocalInput(path, hashlib.sha256(data).hexdigest(), len(data), "image/png")
    assert local.ref == f"input:{local.sha256}"
    renamed = tmp_path / "photo.jpg"  # the type comes from the bytes, not the name, as on the relay
    renamed.write_bytes(data)
    assert read_input(renamed).mime == "image/png"


def test_read_input_refuses_what_is_not_an_image(tmp_path: Path) -> None:
    notes = tmp_path / "notes.png"
    notes.write_text("hello")
    with pytest.raises(InputError, match=rf"^{notes} does not look like an image \(PNG, JPEG"):
        read_input(notes)
    with pytest.raises(InputError, match=r"^cannot read image /no/such\.png: No such file"):
        read_input("/no/such.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="does not look like an image"):
        read_input(empty)


def test_a_bad_file_stops_the_batch_before_anything_is_sent(tmp_path: Path) -> None:
    good = png(tmp_path / "a.png")
    bad = tmp_path / "b.png"
    bad.write_bytes(b"GIF00 not really")
    relay = FakeRelay()
    with pytest.raises(InputError, match=f"{bad} does not look like an image"):
        upload(relay, [good, bad])
    assert relay.requests == []


# ---- uploading


def test_upload_sends_the_file_by_sha256_and_returns_its_ref(tmp_path: Path) -> None:
    path = png(tmp_path / "cat.png")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    seen: list[httpx.Request] = []

    def spy(request: httpx.Request) -> None:
        seen.append(request)

    relay = FakeRelay(lambda r: spy(r))
    [result] = upload(relay, [path])
    assert result == UploadedInput(
        path, f"input:{sha}", sha, len(data), False, f"{RELAY}/v1/inputs/anonymous/{sha}?exp=1&sig=x", 1234.5
    )
    assert relay.requests == [("POST", "/v1/inputs/lookup"), ("PUT", "/v1/inputs")]
    assert relay.looked_up == [[sha]] and seen[0].headers["authorization"] == "Bearer k"
    put = seen[1]
    assert put.headers["x-podstream-sha256"] == sha
    assert put.headers["authorization"] == "Bearer k"
    assert put.headers["content-type"] == "image/png"
    assert put.headers["content-length"] == str(len(data))
    assert "transfer-encoding" not in put.headers
    assert relay.held == {sha: data}


def test_what_the_relay_holds_is_not_sent_again(tmp_path: Path) -> None:
    paths = [png(tmp_path / "a.png", (1, 2, 3)), png(tmp_path / "b.png", (4, 5, 6))]
    relay = FakeRelay()
    first = upload(relay, paths)
    assert [r.skipped for r in first] == [False, False] and relay.puts() == 2
    paths.append(png(tmp_path / "c.png", (7, 8, 9)))
    states: list[UploadProgress] = []
    second = upload(relay, paths, progress=states.append)
    assert [r.skipped for r in second] == [True, True, False]
    assert relay.puts() == 3  # only c.png
    assert sorted(relay.asked()[2:]) == sorted(r.sha256 for r in second)  # asked about, all three
    assert [r.ref for r in second[:2]] == [r.ref for r in first]
    assert second[0].url == first[0].url and second[0].expires_at == 1234.5  # the lookup's answer
    last = states[-1]
    c_size = paths[2].stat().st_size
    assert (last.files, last.files_done, last.skipped, last.bytes, last.bytes_done) == (
        3,
        3,
        2,
        c_size,
        c_size,
    )
    assert upload_summary(last).startswith(
        "uploaded 1 image(s) ("
    ) and "2 already on the relay" in upload_summary(last)


def test_identical_files_are_uploaded_once(tmp_path: Path) -> None:
    a = png(tmp_path / "a.png")
    copy = tmp_path / "copy.png"
    copy.write_bytes(a.read_bytes())
    relay = FakeRelay()
    states: list[UploadProgress] = []
    results = upload(relay, [a, copy, a], progress=states.append)
    assert relay.requests == [("POST", "/v1/inputs/lookup"), ("PUT", "/v1/inputs")]
    assert relay.looked_up == [[results[0].sha256]]
    size = a.stat().st_size
    assert states[0] == UploadProgress(2, 0, 0, 2 * size, 0)  # two paths, until hashing finds one is a copy
    assert states[-1] == UploadProgress(1, 1, 0, size, size)
    assert [r.path for r in results] == [a, copy, a]
    assert len({r.ref for r in results}) == 1


def test_files_are_uploaded_in_parallel_with_a_byte_count(tmp_path: Path) -> None:
    paths = [png(tmp_path / f"{k:02d}.png", (k, 2 * k, 3 * k), (64 + k, 64)) for k in range(20)]
    relay = FakeRelay()
    relay.delay_s = 0.02
    states: list[UploadProgress] = []
    results = upload(relay, paths, workers=4, progress=states.append)
    assert [r.path for r in results] == paths and not any(r.skipped for r in results)
    assert relay.puts() == 20
    assert sorted(relay.asked()) == sorted(r.sha256 for r in results)  # each once, in a few lookups
    assert 1 <= len(relay.looked_up) < 20
    assert 1 < relay.max_in_flight <= 4
    total = sum(p.stat().st_size for p in paths)
    assert states[0] == UploadProgress(20, 0, 0, total, 0)
    assert states[-1] == UploadProgress(20, 20, 0, total, total)
    assert [s.bytes_done for s in states] == sorted(s.bytes_done for s in states)  # no retries: only up


def test_a_large_file_is_streamed_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "big.bmp"
    path.write_bytes(b"BM" + bytes(3 * CHUNK_BYTES))
    relay = FakeRelay()
    states: list[UploadProgress] = []
    [result] = upload(relay, [path], progress=states.append)
    assert relay.held[result.sha256] == path.read_bytes()
    sent = [s.bytes_done for s in states]
    assert sent[-1] == result.bytes and len({b for b in sent if 0 < b < result.bytes}) >= 3


def flaky(*answers: httpx.Response | type[Exception]) -> Callable[[httpx.Request], httpx.Response | None]:
    """Fail the first PUTs with these answers (or by raising these exceptions), then let them through."""
    queue = list(answers)

    def script(request: httpx.Request) -> httpx.Response | None:
        if request.method != "PUT" or not queue:
            return None
        answer = queue.pop(0)
        if isinstance(answer, httpx.Response):
            return answer
        raise answer("connection reset", request=request)  # type: ignore[call-arg]

    return script


@pytest.mark.parametrize(
    "fault",
    [
        error(503, "unavailable", "the relay is restarting"),
        httpx.Response(502, text="bad gateway"),
        error(429, "rate_limited", "slow down"),
        httpx.ReadError,
        httpx.RemoteProtocolError,
    ],
    ids=["503", "502", "429", "read-error", "protocol-error"],
)
def test_network_errors_and_5xx_are_retried(tmp_path: Path, fault: httpx.Response | type[Exception]) -> None:
    path = png(tmp_path / "a.png")
    relay = FakeRelay(flaky(fault, fault))
    states: list[UploadProgress] = []
    [result] = upload(relay, [path], progress=states.append)
    assert not result.skipped and relay.puts() == 3
    assert states[-1].bytes_done == states[-1].bytes == path.stat().st_size


def test_retries_run_out_with_one_line(tmp_path: Path) -> None:
    path = png(tmp_path / "a.png")
    relay = FakeRelay(flaky(*[error(503, "unavailable", "restarting")] * 5))
    with pytest.raises(TransferError) as info:
        upload(relay, [path], attempts=3)
    assert str(info.value) == (
        f"uploading {path} to the relay at {RELAY}: HTTP 503 unavailable: restarting (after 3 tries)"
    )
    assert relay.puts() == 3


def test_an_unreachable_relay_says_so(tmp_path: Path) -> None:
    path = png(tmp_path / "a.png")
    with pytest.raises(TransferError, match=r"^cannot reach the relay at http://127\.0\.0\.1:9 \(uploading "):
        upload_inputs([path], relay="http://127.0.0.1:9", attempts=2, backoff=NO_WAIT)


@pytest.mark.parametrize(
    ("answer", "kind", "message"),
    [
        (
            error(413, "too_large", "over 20 MB"),
            InputError,
            r"{path} is \d+ B, over the relay's limit for one image \(HTTP 413 too_large: over 20 MB\)",
        ),
        (
            error(415, "unsupported_media_type", "not an image"),
            InputError,
            r"{path} is not an image the relay takes: PNG, JPEG, WebP, GIF or BMP \(HTTP 415",
        ),
        (error(422, "sha256_mismatch", "no"), InputError, r"{path} changed while it was being uploaded"),
        (
            error(507, "quota_exceeded", "this key holds 1 GB of inputs"),
            TransferError,
            r"{path} does not fit in this key's input quota on the relay \(HTTP 507 quota_exceeded: this key",
        ),
        (
            error(401, "unauthorized", "no such key"),
            TransferError,
            r"the relay refused the API key uploading {path} \(HTTP 401 unauthorized: no such key\)$",
        ),
        (
            error(404, "not_found", "Not Found"),
            TransferError,
            r"the relay at http://relay:8700 does not take image uploads \(PUT /v1/inputs: HTTP 404",
        ),
        (
            error(400, "bad_length", "no"),
            TransferError,
            r"uploading {path}: the relay answered HTTP 400 bad_length",
        ),
    ],
    ids=["413", "415", "422", "507", "401", "404", "400"],
)
def test_refusals_are_one_line_naming_the_file_and_not_retried(
    tmp_path: Path, answer: httpx.Response, kind: type[Exception], message: str
) -> None:
    path = png(tmp_path / "a.png")
    relay = FakeRelay(flaky(answer))
    with pytest.raises(kind, match="^" + message.format(path=path)) as info:
        upload(relay, [path])
    assert "\n" not in str(info.value)
    assert relay.puts() == 1


def test_a_key_refused_by_the_lookup_is_said_naming_a_file(tmp_path: Path) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return error(403, "forbidden", "this API key lacks the scope jobs:write")

    path = png(tmp_path / "a.png")
    relay = FakeRelay(refuse)
    with pytest.raises(TransferError) as info:
        upload(relay, [path])
    assert str(info.value) == (
        f"the relay refused the API key uploading {path} "
        "(HTTP 403 forbidden: this API key lacks the scope jobs:write)"
    )
    assert relay.requests == [("POST", "/v1/inputs/lookup")]
    with relay.client() as client, pytest.raises(TransferError, match=r"\(no key given: --key or PODSTREAM"):
        upload_inputs([path], relay=RELAY, client=client)


@pytest.mark.parametrize("status", [404, 405])
def test_a_relay_without_lookups_is_asked_per_file(tmp_path: Path, status: int) -> None:
    """A relay older than `POST /v1/inputs/lookup` (405 there; 404 from a proxy): one lookup tried, then a
    GET per file before its PUT, as before the route; what it holds is not sent."""

    def old(request: httpx.Request) -> httpx.Response | None:
        return error(status, "not_found", "no") if request.url.path == "/v1/inputs/lookup" else None

    paths = [png(tmp_path / f"{k}.png", (k, k, k)) for k in range(3)]
    relay = FakeRelay(old, lookups=False)
    held = upload(relay, paths[:1])
    assert [m for m, _ in relay.requests] == ["POST", "GET", "PUT"]
    relay.requests.clear()
    results = upload(relay, paths, workers=1)
    assert [r.skipped for r in results] == [True, False, False]
    assert results[0].url == held[0].url  # the GET's answer
    assert [m for m, _ in relay.requests] == ["POST", "GET", "GET", "PUT", "GET", "PUT"]
    assert relay.puts() == 2 and len(relay.held) == 3

    def refuse(request: httpx.Request) -> httpx.Response | None:
        if request.method == "GET":
            return error(401, "unauthorized", "no such key")
        return old(request)

    with pytest.raises(TransferError, match=r"^the relay refused the API key uploading .*no such key\)$"):
        upload(FakeRelay(refuse, lookups=False), paths)


@pytest.mark.parametrize(
    "fault",
    [error(503, "unavailable", "restarting"), httpx.ConnectError, httpx.ReadError],
    ids=["503", "connect-error", "read-error"],
)
def test_a_lookup_is_retried(tmp_path: Path, fault: httpx.Response | type[Exception]) -> None:
    faults = [fault, fault]

    def flaky_lookup(request: httpx.Request) -> httpx.Response | None:
        if request.url.path != "/v1/inputs/lookup" or not faults:
            return None
        answer = faults.pop()
        if isinstance(answer, httpx.Response):
            return answer
        raise answer("connection reset", request=request)  # type: ignore[call-arg]

    path = png(tmp_path / "a.png")
    relay = FakeRelay(flaky_lookup)
    [result] = upload(relay, [path])
    assert not result.skipped and relay.puts() == 1
    assert [m for m, _ in relay.requests] == ["POST", "POST", "POST", "PUT"]
    relay = FakeRelay(lambda r: error(503, "busy", "later") if r.method == "POST" else None)
    with pytest.raises(TransferError) as info:
        upload(relay, [path], attempts=2)
    assert str(info.value) == (
        f"asking the relay at {RELAY} which of 1 image(s) it holds (the first {path}): "
        "HTTP 503 busy: later (after 2 tries)"
    )
    assert relay.puts() == 0


def test_a_large_batch_is_looked_up_1000_at_a_time(tmp_path: Path) -> None:
    paths = []
    for k in range(1203):
        path = tmp_path / f"{k:04d}.png"
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + k.to_bytes(4, "big"))  # the relay checks magic bytes only
        paths.append(path)
    relay = FakeRelay()
    relay.held = {hashlib.sha256(p.read_bytes()).hexdigest(): p.read_bytes() for p in paths[::2]}
    results = upload(relay, paths, workers=8)
    assert all(len(batch) <= 1000 for batch in relay.looked_up)
    assert sorted(relay.asked()) == sorted(r.sha256 for r in results)
    assert [r.skipped for r in results] == [k % 2 == 0 for k in range(1203)]
    assert relay.puts() == 601


def test_hashing_overlaps_the_uploads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads start once the first files are hashed and found missing, not after every file is hashed."""
    hashed_at: list[float] = []
    real = uploads_mod.hash_input

    def slow_read(path: Path, *, keep: bool) -> tuple[LocalInput, bytes | None]:
        time.sleep(0.03)
        local = real(path, keep=keep)
        hashed_at.append(time.monotonic())
        return local

    monkeypatch.setattr(uploads_mod, "hash_input", slow_read)
    paths = [png(tmp_path / f"{k:02d}.png", (k, 1, 1)) for k in range(16)]
    relay = FakeRelay()
    results = upload(relay, paths, workers=2)
    assert relay.puts() == 16 and not any(r.skipped for r in results)
    assert min(relay.put_times) < max(hashed_at)
    assert sorted(relay.asked()) == sorted(r.sha256 for r in results)


def test_a_file_that_cannot_be_read_once_checked_stops_the_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = [png(tmp_path / f"{k}.png", (k, k, k)) for k in range(3)]
    paths[2].unlink()  # after it was checked, before it is hashed
    real = uploads_mod.check_input

    def checked_then_gone(path: str | Path) -> tuple[Path, int, str]:
        return real(path) if Path(path) != paths[2] else (paths[2], 1234, "image/png")

    monkeypatch.setattr(uploads_mod, "check_input", checked_then_gone)
    with pytest.raises(InputError, match=f"^cannot read image {paths[2]}"):
        upload(FakeRelay(), paths)


def test_the_first_failure_stops_the_rest(tmp_path: Path) -> None:
    paths = [png(tmp_path / f"{k}.png", (k, k, k)) for k in range(6)]
    relay = FakeRelay(flaky(error(415, "unsupported_media_type", "no")))
    with pytest.raises(InputError, match=f"^{paths[0]} is not an image"):
        upload(relay, paths, workers=1)
    assert relay.puts() == 1


def test_a_file_that_shrinks_during_upload_is_named(tmp_path: Path) -> None:
    path = png(tmp_path / "a.png")
    local = read_input(path)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(InputError, match=f"^{path} changed while it was being uploaded"):
        upload(FakeRelay(), [local])  # type: ignore[list-item]


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="not a relay URL"):
        upload_inputs([], relay="relay:8700")
    with pytest.raises(ValueError, match="at least 1"):
        upload_inputs([], relay=RELAY, workers=0)
    assert upload_inputs([], relay=RELAY) == []


def test_an_answer_that_is_not_the_files_is_refused(tmp_path: Path) -> None:
    path = png(tmp_path / "a.png")
    relay = FakeRelay(flaky(httpx.Response(201, json={"sha256": "0" * 64})))
    with pytest.raises(TransferError, match=f"^uploading {path}: unexpected answer from the relay"):
        upload(relay, [path])


# ---- building the job from uploads


def test_uploads_become_items_by_reference(tmp_path: Path) -> None:
    paths = [png(tmp_path / "cat photo.png"), png(tmp_path / "dog.png", (1, 1, 1))]
    uploaded = upload(FakeRelay(), paths)
    job_input = submit_mod.build_input(
        images=[*uploaded, "https://example.com/x/owl.webp", "data:image/png;base64,AAAA"], seed=1
    )
    assert job_input["items"] == [
        {"id": "cat_photo", "image": uploaded[0].ref, "seed": 1},
        {"id": "dog", "image": uploaded[1].ref, "seed": 2},
        {"id": "owl", "image": "https://example.com/x/owl.webp", "seed": 3},
        {"id": "", "image": "data:image/png;base64,AAAA", "seed": 4},
    ]
    submit_mod.validate(job_input)
    hundred = submit_mod.build_input(images=[uploaded[0]] * 100)
    assert submit_mod.check_size(hundred) < 12_000  # 100 images: a few KB of job
    assert json.dumps(hundred).count("input:") == 100


def test_is_local() -> None:
    assert submit_mod.is_local("cat.png") and submit_mod.is_local(Path("https://x"))
    for remote in ("https://x/y.png", "http://x", "data:image/png;base64,", "input:" + "0" * 64):
        assert not submit_mod.is_local(remote)


def test_the_relay_cap_is_the_relays() -> None:
    big = {"task": "image-to-video", "items": [{"image": "A" * 10_000_000}]}
    assert submit_mod.check_size(big, relay=True) > submit_mod.RUN_BODY_CAP
    with pytest.raises(InputError, match=r"over RunPod's 10 MB /run cap .*submit through a relay"):
        submit_mod.check_size(big)
    huge = {"task": "image-to-video", "items": [{"image": "A" * 100_000_000}]}
    with pytest.raises(
        InputError, match=r"over the relay's 100 MB submit cap \(100,000,000 bytes\): give images"
    ):
        submit_mod.check_size(huge, relay=True)


def test_the_upload_bar_ends_with_one_line_without_a_terminal(tmp_path: Path) -> None:
    from rich.console import Console

    paths = [png(tmp_path / "a.png"), png(tmp_path / "b.png", (9, 9, 9))]
    relay = FakeRelay()
    upload(relay, paths[:1])
    text = io.StringIO()
    with UploadBar(console=Console(file=text, force_terminal=False)) as bar:
        upload(relay, paths, progress=bar)
    size = human_bytes(paths[1].stat().st_size)
    assert text.getvalue() == f"uploaded 1 image(s) ({size}); 1 already on the relay\n"
    live = io.StringIO()
    with UploadBar(console=Console(file=live, force_terminal=True, width=120)) as bar:
        upload(FakeRelay(), paths, progress=bar)
    assert "2/2 files" in live.getvalue()


def test_a_small_file_is_read_once_and_sent_as_hashed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file up to KEEP_BYTES is read by its hash and those bytes are sent (a change after that is not); a
    larger one is read again for its upload, and a change is named."""
    path = png(tmp_path / "a.png")
    original = path.read_bytes()
    real = uploads_mod.hash_input

    def then_changed(path: Path, *, keep: bool) -> tuple[LocalInput, bytes | None]:
        hashed = real(path, keep=keep)
        path.write_bytes(original[:-1] + b"!")  # same size, other bytes
        return hashed

    monkeypatch.setattr(uploads_mod, "hash_input", then_changed)
    relay = FakeRelay()
    [result] = upload(relay, [path])
    assert relay.held == {result.sha256: original}
    path.write_bytes(original)
    monkeypatch.setattr(uploads_mod, "KEEP_BYTES", 10)
    with pytest.raises(InputError, match=f"^{path} changed while it was being uploaded"):
        upload(FakeRelay(), [path])


def test_files_kept_in_memory_stay_within_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashing never waits for the uploads: the files beyond the budget are read again for their upload."""
    paths = [png(tmp_path / f"{k:02d}.png", (k, 3, 3), (40, 40)) for k in range(16)]
    size = max(p.stat().st_size for p in paths)
    monkeypatch.setattr(uploads_mod, "KEEP_BUDGET", 3 * size)
    kept: list[bool] = []
    real = uploads_mod.hash_input

    def counting(path: Path, *, keep: bool) -> tuple[LocalInput, bytes | None]:
        kept.append(keep)
        return real(path, keep=keep)

    monkeypatch.setattr(uploads_mod, "hash_input", counting)
    relay = FakeRelay()
    results = upload(relay, paths, workers=2)
    assert relay.puts() == 16 and [relay.held[r.sha256] for r in results] == [p.read_bytes() for p in paths]
    assert kept.count(True) == 3 and len(kept) == 16
