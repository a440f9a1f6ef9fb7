from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from bench._relay_stack import free_port
from podstream import jobspec
from podstream.jobspec import Item, ItemError, JobInputError, Limits, parse_job
from tests.worker.support import SERVED_PNG, png_base64, serve_images
from worker import inputs
from worker.inputs import ImageError, image_source


def job(**changes: Any) -> dict[str, Any]:
    return {"task": "text-to-image", "items": [{"prompt": "a cat"}], **changes}


def test_a_good_job_with_defaults() -> None:
    parsed = jobspec.parse_job(job(items=[{"prompt": "a", "id": "x", "seed": 7}]))
    assert parsed.task == "text-to-image"
    assert parsed.format == "png"
    assert parsed.params.batch_size == 1
    assert parsed.output.part_bytes == 512 * 1024
    [item] = parsed.items
    assert isinstance(item, jobspec.Item)
    assert (item.id, item.prompt, item.seed) == ("x", "a", 7)
    assert jobspec.parse_job({"task": "image-to-video", "items": [{"image": "x"}]}).format == "mp4"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "input must be a JSON object, got null"),
        ([1], "input must be a JSON object, got an array"),
        ({"items": [{"prompt": "a"}]}, "input.task: Field required"),
        (job(task="video"), "input.task: must be one of"),
        (job(items=[]), "input.items: List should have at least 1 item"),
        (job(items="abc"), "input.items: Input should be a valid list"),
        (job(colour="red"), "input.colour: unknown field"),
        (job(params={"steps": 0}), "input.params.steps: Input should be greater than or equal to 1"),
        (job(params={"frames": 5000}), "input.params.frames: at most 1024"),
        (job(params={"width": 8192}), "input.params.width: at most 4096"),
        (job(params={"stepz": 3}), "input.params.stepz: unknown field"),
        (job(output={"format": "mp4"}), "input.output.format: text-to-image makes images"),
        ({"task": "image-to-video", "items": [{"image": "x"}], "output": {"format": "png"}}, "makes videos"),
        ({"task": "image-to-video", "items": [{"image": "x"}], "output": {"crf": 60}}, "H.264 takes 0..51"),
        (job(output={"part_bytes": 10**7}), "input.output.part_bytes: Input should be less than or equal to"),
        (job(resend={"from": 3}), "input.resend: unknown field"),
    ],
)
def test_a_malformed_job_fails_with_one_clear_line(raw: object, message: str) -> None:
    with pytest.raises(JobInputError) as info:
        jobspec.parse_job(raw)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_too_many_items() -> None:
    with pytest.raises(JobInputError, match="3 items, at most 2 per job"):
        jobspec.parse_job(job(items=[{"prompt": "a"}] * 3), Limits(max_items=2))


def test_bad_items_become_item_errors_and_the_rest_stays() -> None:
    parsed = jobspec.parse_job(
        job(
            items=[
                {"prompt": "ok"},
                "not an object",
                {"prompt": "x" * 30, "id": "long"},
                {"id": "no-prompt"},
                {"prompt": "a", "seed": -1},
                {"prompt": "a", "colour": 1, "id": "extra"},
                {"prompt": "ok", "id": "last"},
            ]
        ),
        Limits(max_prompt_chars=20),
    )
    kinds = [(x.code, x.index, x.id) if isinstance(x, ItemError) else "ok" for x in parsed.items]
    assert kinds == [
        "ok",
        ("bad_item", 1, ""),
        ("prompt_too_long", 2, "long"),
        ("bad_item", 3, "no-prompt"),
        ("bad_item", 4, ""),
        ("bad_item", 5, "extra"),
        "ok",
    ]
    errors = [x for x in parsed.items if isinstance(x, ItemError)]
    assert errors[0].message.startswith("input.items[1]: Input should be a valid dictionary")
    assert errors[2].message == "input.items[3].prompt: required for text-to-image"
    assert errors[4].message.startswith("input.items[5].colour: unknown field")


def test_image_to_video_items_need_an_image() -> None:
    parsed = jobspec.parse_job({"task": "image-to-video", "items": [{"prompt": "no image"}]})
    [error] = parsed.items
    assert isinstance(error, ItemError)
    assert error.message == "input.items[0].image: required for image-to-video"


def test_limits_from_env() -> None:
    limits = Limits.from_env({"PODSTREAM_MAX_ITEMS": "5", "PODSTREAM_FETCH_TIMEOUT_S": "1.5"})
    assert (limits.max_items, limits.fetch_timeout_s) == (5, 1.5)
    empty = {"PODSTREAM_MAX_ITEMS": "", "PODSTREAM_INPUT_HOSTS": " "}
    assert Limits.from_env(empty) == Limits()  # an empty variable is an unset one
    hosts = Limits.from_env({"PODSTREAM_INPUT_HOSTS": "Relay.Internal, 10.0.0.5:8700 [0:0::1]:8700,[::1]"})
    assert hosts.input_hosts == ("relay.internal", "10.0.0.5:8700", "[::1]:8700", "[::1]")
    assert Limits(input_hosts=("LOCALHOST.:80",)).input_hosts == ("localhost:80",)  # built directly: the same
    assert Limits.from_env({"PODSTREAM_ALLOW_PRIVATE_URLS": "yes"}).allow_private_urls


@pytest.mark.parametrize(
    ("variable", "raw", "message"),
    [
        ("PODSTREAM_MAX_ITEMS", "x", "PODSTREAM_MAX_ITEMS='x' is not a number"),
        ("PODSTREAM_FETCH_TIMEOUT_S", "1s", "PODSTREAM_FETCH_TIMEOUT_S='1s' is not a number"),
        ("PODSTREAM_ALLOW_PRIVATE_URLS", "maybe", "PODSTREAM_ALLOW_PRIVATE_URLS='maybe' is not a boolean"),
        (
            "PODSTREAM_INPUT_HOSTS",
            "http://relay:8700",
            "PODSTREAM_INPUT_HOSTS='http://relay:8700' is not a list",
        ),
        ("PODSTREAM_INPUT_HOSTS", "relay:0", "'relay:0': the port must be 1..65535"),
        ("PODSTREAM_INPUT_HOSTS", "relay:99999", "'relay:99999': the port must be 1..65535"),
        ("PODSTREAM_INPUT_HOSTS", "a, b/c", "'b/c' is not host, host:port or \\[ipv6\\]:port$"),
        ("PODSTREAM_INPUT_HOSTS", "::1", "put an IPv6 address in brackets: \\[::1\\]:8700"),
        ("PODSTREAM_INPUT_HOSTS", "fd00::5:8700", "put an IPv6 address in brackets"),
        (
            "PODSTREAM_INPUT_HOSTS",
            "https://relay/x",
            "'https://relay/x' is not host.* \\(no scheme or path: relay\\)$",
        ),
        ("PODSTREAM_INPUT_HOSTS", "[relay]:80", "'\\[relay\\]:80' is not host"),
        ("PODSTREAM_INPUT_HOSTS", "[1::2::3]", "1::2::3 is not an IPv6 address"),
    ],
)
def test_limits_from_env_names_the_variable_of_a_bad_value(variable: str, raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        Limits.from_env({variable: raw})
    assert str(info.value).startswith(f"{variable}={raw!r} ")


def test_text_items_need_a_prompt_and_image_items_an_image() -> None:
    items = [{"prompt": "a"}, {"prompt": ""}, {"image": "x"}]
    parsed = jobspec.parse_job(job(items=items))
    assert [i.message if isinstance(i, ItemError) else "ok" for i in parsed.items] == [
        "ok", "input.items[1].prompt: required for text-to-image", "input.items[2].prompt: required for text-to-image",
    ]  # fmt: skip
    parsed = jobspec.parse_job({"task": "image-to-video", "items": [{"image": ""}]})
    assert isinstance(parsed.items[0], ItemError) and parsed.items[0].code == "bad_item"


def test_image_sha256_is_64_lowercase_hex() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    items = [{"image": "x", "image_sha256": digest}, {"image": "x", "image_sha256": digest.upper()}]
    good, bad = jobspec.parse_job({"task": "image-to-video", "items": items}).items
    assert isinstance(good, jobspec.Item) and good.image_sha256 == digest
    assert isinstance(bad, ItemError) and bad.code == "bad_item"
    assert bad.message.startswith("input.items[1].image_sha256: String should match pattern")


# ---- images


def test_load_image_from_base64_and_data_url() -> None:
    encoded = png_base64(40, 30)
    assert inputs.load_image(encoded).size == (40, 30)
    picture = inputs.load_image("data:image/png;base64," + encoded)
    assert (picture.size, picture.mode) == ((40, 30), "RGB")


@pytest.mark.parametrize(
    ("ref", "code", "message"),
    [
        ("not base64!", "bad_image", "neither an http\\(s\\) URL nor valid base64"),
        ("data:image/png,rawdata", "bad_image", "must be base64"),
        (base64.b64encode(b"not an image").decode(), "bad_image", "cannot be decoded"),
    ],
)
def test_bad_images(ref: str, code: str, message: str) -> None:
    with pytest.raises(ImageError, match=message) as info:
        inputs.load_image(ref)
    assert info.value.code == code
    assert "object at 0x" not in str(info.value)  # no Python repr reaches the job's consumers


def test_image_sha256_is_checked_on_the_decoded_bytes() -> None:
    encoded = png_base64(40, 30)
    digest = hashlib.sha256(base64.b64decode(encoded)).hexdigest()
    assert inputs.load_image(encoded, sha256=digest).size == (40, 30)
    assert inputs.load_image("data:image/png;base64," + encoded, sha256=digest).size == (40, 30)
    other = hashlib.sha256(b"another image").hexdigest()
    with pytest.raises(ImageError) as info:
        inputs.load_image(encoded, sha256=other)
    assert info.value.code == "image_sha256_mismatch"
    assert str(info.value) == (
        f"the image's bytes hash to sha256 {digest[:12]}..., the item's image_sha256 is {other[:12]}...: "
        "not the image the job names (changed or replaced since it was given)"
    )


def test_image_size_limits() -> None:
    encoded = png_base64(40, 30)
    with pytest.raises(ImageError, match="at most 10") as info:
        inputs.load_image(encoded, Limits(max_image_bytes=10))
    assert info.value.code == "image_too_large"
    with pytest.raises(ImageError, match="40x30, over 1000 pixels"):
        inputs.load_image(encoded, Limits(max_image_pixels=1000))


@pytest.fixture
def image_server() -> Iterator[str]:
    with serve_images() as url:
        yield url


#: The test servers listen on loopback, which the worker refuses by default (see the SSRF tests below).
LOCAL = Limits(allow_private_urls=True)


def test_fetch_image_over_http(image_server: str) -> None:
    assert inputs.load_image(f"{image_server}/ok.png", LOCAL).size == (24, 16)
    with pytest.raises(ImageError, match="answered 404") as info:
        inputs.load_image(f"{image_server}/missing.png", LOCAL)
    assert info.value.code == "fetch_failed"
    with pytest.raises(ImageError, match="5000 bytes, at most 1000") as info:
        inputs.load_image(f"{image_server}/big.png", Limits(max_image_bytes=1000, allow_private_urls=True))
    assert info.value.code == "image_too_large"


def test_image_sha256_is_checked_on_the_fetched_bytes(image_server: str) -> None:
    digest = hashlib.sha256(SERVED_PNG).hexdigest()
    assert inputs.load_image(f"{image_server}/ok.png", LOCAL, sha256=digest).size == (24, 16)
    with pytest.raises(
        ImageError, match=f"hash to sha256 {digest[:12]}\\.\\.\\., the item's image_sha256 is 000000000000"
    ) as info:
        inputs.load_image(f"{image_server}/ok.png", LOCAL, sha256="0" * 64)
    assert info.value.code == "image_sha256_mismatch"


def test_fetch_has_a_total_deadline(image_server: str) -> None:
    # The server sends a byte every 50 ms: no single read times out, the whole fetch does.
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"timed out after 0\.5 s") as info:
        inputs.load_image(f"{image_server}/slow.png", Limits(fetch_timeout_s=0.5, allow_private_urls=True))
    assert info.value.code == "fetch_failed"
    assert time.monotonic() - started < 1.9


def test_fetch_connection_refused() -> None:
    port = free_port()  # nothing listens on it
    with pytest.raises(ImageError, match="failed") as info:
        inputs.load_image(
            f"http://127.0.0.1:{port}/x.png", Limits(fetch_timeout_s=2, allow_private_urls=True)
        )
    assert info.value.code == "fetch_failed"


# ---- custom tasks, several outputs per item, custom input models, the JSON Schema


def test_custom_task_names_are_taken_when_the_model_does_them() -> None:
    parsed = jobspec.parse_job(job(task="upscale"), tasks={"upscale"})
    assert parsed.task == "upscale" and parsed.format == ""  # each result's kind picks its encoding
    assert (
        jobspec.parse_job(job(task="upscale", output={"format": "webp"}), tasks={"upscale"}).format == "webp"
    )
    with pytest.raises(JobInputError, match=r"input\.task: must be one of 'upscale'$"):
        jobspec.parse_job(job(), tasks={"upscale"})
    with pytest.raises(JobInputError, match=r"input\.task: String should match pattern"):
        jobspec.parse_job(job(task="has spaces"), tasks={"has spaces"})


def test_num_images_asks_for_several_outputs_per_item() -> None:
    assert jobspec.parse_job(job(params={"num_images": 4})).params.num_images == 4
    with pytest.raises(
        JobInputError, match=r"input\.params\.num_images: Input should be less than or equal to 64"
    ):
        jobspec.parse_job(job(params={"num_images": 65}))
    with pytest.raises(JobInputError, match=r"input\.params\.num_images: 6 outputs, at most 5 per job"):
        jobspec.parse_job(job(items=[{"prompt": "a"}] * 2, params={"num_images": 3}), Limits(max_items=5))


class SeedStyle(BaseModel):
    prompt: str
    num_images: int = 1
    width: int = 512
    seed: int | None = None
    style: str = "photo"


def test_a_custom_input_model_is_the_whole_job_input() -> None:
    parsed = jobspec.parse_custom({"prompt": "a cat", "num_images": 3, "seed": 9}, SeedStyle, "draw")
    assert parsed.task == "draw" and isinstance(parsed.custom, SeedStyle)
    assert parsed.custom.style == "photo"
    assert (parsed.params.num_images, parsed.params.width) == (
        3,
        512,
    )  # params-named fields keep their meaning
    [item] = parsed.items
    assert isinstance(item, jobspec.Item) and (item.prompt, item.seed) == ("a cat", 9)
    with pytest.raises(JobInputError, match=r"^input\.prompt: Field required$"):
        jobspec.parse_custom({"num_images": 3}, SeedStyle, "draw")
    with pytest.raises(JobInputError, match=r"^input\.num_images: Input should be less than or equal to 64$"):
        jobspec.parse_custom({"prompt": "a", "num_images": 100}, SeedStyle, "draw")
    with pytest.raises(JobInputError, match=r"^input\.width: at most 4096, got 5000$"):
        jobspec.parse_custom({"prompt": "a", "width": 5000}, SeedStyle, "draw")
    with pytest.raises(JobInputError, match=r"^input must be a JSON object, got an array$"):
        jobspec.parse_custom([], SeedStyle, "draw")


def test_job_schema_accepts_good_jobs_and_refuses_bad_ones() -> None:
    import jsonschema

    schema = jobspec.job_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    check = jsonschema.Draft202012Validator(schema)
    assert check.is_valid(job(params={"steps": 4, "num_images": 2}))
    assert check.is_valid({"task": "image-to-video", "items": [{"image": "https://x/y.png", "seed": 3}]})
    bad = {"task": "text-to-imag", "items": [{"prompt": "a", "colour": 1}], "params": {"steps": -3}}
    paths = sorted("/".join(map(str, e.absolute_path)) for e in check.iter_errors(bad))
    assert paths == ["items/0", "params/steps", "task"]
    assert jobspec.job_schema(tasks={"upscale"})["properties"]["task"]["enum"] == ["upscale"]
    custom = jsonschema.Draft202012Validator(jobspec.job_schema(SeedStyle))
    assert custom.is_valid({"prompt": "a", "num_images": 2}) and not custom.is_valid({"num_images": 2})


# ---- SSRF: image URLs that reach the worker's own network are refused


def test_a_loopback_server_is_refused_then_allowed_with_the_variable(image_server: str) -> None:
    url = f"{image_server}/ok.png"
    with pytest.raises(ImageError, match=r"refused: 127\.0\.0\.1 is a loopback address") as info:
        inputs.load_image(url)
    host_port = image_server.removeprefix("http://")
    assert info.value.code == "url_refused" and str(info.value) == (
        f"GET {url} refused: 127.0.0.1 is a loopback address. To let the worker fetch from this host, "
        f"set PODSTREAM_INPUT_HOSTS={host_port} (or PODSTREAM_ALLOW_PRIVATE_URLS=1: every private address)"
    )
    allowed = Limits.from_env({"PODSTREAM_ALLOW_PRIVATE_URLS": "1"})
    assert allowed.allow_private_urls and inputs.load_image(url, allowed).size == (24, 16)
    assert not Limits.from_env({"PODSTREAM_ALLOW_PRIVATE_URLS": "0"}).allow_private_urls


def test_names_are_checked_after_dns_resolution(image_server: str) -> None:
    port = image_server.rsplit(":", 1)[1]
    with pytest.raises(ImageError, match=r"refused: 127\.0\.0\.1 is a loopback address"):
        inputs.load_image(f"http://localhost:{port}/ok.png")


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.7", "private"),
        ("172.16.5.4", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
        ("::ffff:10.0.0.1", "private"), ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"),
        ("fd00::1", "private"), ("93.184.216.34", None), ("2606:4700::1111", None),
    ],
)  # fmt: skip
def test_which_addresses_are_refused(address: str, kind: str | None) -> None:
    assert inputs.blocked_kind(address) == kind


def checks_passing(monkeypatch: pytest.MonkeyPatch, passing: int) -> list[str]:
    """Only loopback servers may run in tests: let the first `passing` address checks through (as if those
    addresses were public), then check for real. Returns every address checked."""
    real, checked = inputs.blocked_kind, []

    def fake(address: str) -> str | None:
        checked.append(address)
        return None if len(checked) <= passing else real(address)

    monkeypatch.setattr(inputs, "blocked_kind", fake)
    return checked


def test_every_redirect_is_checked(image_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert inputs.load_image(f"{image_server}/redirect?to=/ok.png", LOCAL).size == (24, 16)  # followed
    with serve_images() as elsewhere:
        checked = checks_passing(monkeypatch, 1)  # the first host's address passes, as if it were public
        with pytest.raises(ImageError, match=r"refused: 127\.0\.0\.1 is a loopback address") as info:
            inputs.load_image(f"{image_server}/redirect?to={elsewhere}/ok.png")
        assert info.value.code == "url_refused" and f"GET {elsewhere}/ok.png refused" in str(info.value)
        assert checked == ["127.0.0.1"] * 2  # the redirect's target too, before connecting to it
    with pytest.raises(ImageError, match="more than 2 redirects"):
        hops = "/redirect?to=/redirect?to=/redirect?to=/ok.png"
        inputs.load_image(f"{image_server}{hops}", Limits(max_redirects=2, allow_private_urls=True))


def rebinding_dns(monkeypatch: pytest.MonkeyPatch, name: str, answers: list[str]) -> list[str]:
    """Make `name` resolve to `answers[0]` on the first lookup, `answers[1]` on the next, ... (the last one
    from then on), as a DNS server of the name's owner can (DNS rebinding). Other names resolve as usual.
    Returns the addresses handed out, one per lookup of `name`."""
    real = socket.getaddrinfo
    handed: list[str] = []

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return real(host, *args, **kwargs)
        handed.append(answers[min(len(handed), len(answers) - 1)])
        return real(handed[-1], *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return handed


def test_a_rebinding_name_gets_no_connection_to_the_address_it_rebinds_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name that resolves to a public address when checked and to loopback when connected: the worker
    connects to the address it checked, so nothing, not even one blind request, reaches the loopback server."""
    with socket.socket() as loopback:
        loopback.bind(("127.0.0.1", 0))
        loopback.listen()
        loopback.setblocking(False)
        port = loopback.getsockname()[1]
        handed = rebinding_dns(monkeypatch, "images.example", ["93.184.216.34", "127.0.0.1"])
        with pytest.raises(ImageError) as info:  # the public address does not answer here
            inputs.load_image(f"http://images.example:{port}/ok.png", Limits(fetch_timeout_s=1))
        assert info.value.code == "fetch_failed"
        assert handed == ["93.184.216.34"], "the name is resolved once"
        with pytest.raises(BlockingIOError):  # no connection is waiting to be accepted
            loopback.accept()


def test_a_name_that_rebinds_to_loopback_is_refused_before_connecting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as loopback:
        loopback.bind(("127.0.0.1", 0))
        loopback.listen()
        loopback.setblocking(False)
        port = loopback.getsockname()[1]
        handed = rebinding_dns(monkeypatch, "images.example", ["127.0.0.1", "93.184.216.34"])
        with pytest.raises(ImageError, match=r"refused: 127\.0\.0\.1 is a loopback address") as info:
            inputs.load_image(f"http://images.example:{port}/ok.png")
        assert info.value.code == "url_refused" and handed == ["127.0.0.1"]
        with pytest.raises(BlockingIOError):
            loopback.accept()


class HostRecorder(http.server.BaseHTTPRequestHandler):
    hosts: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hosts.append(str(self.headers["Host"]))
        self.send_response(200)
        self.send_header("Content-Length", str(len(SERVED_PNG)))
        self.end_headers()
        self.wfile.write(SERVED_PNG)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_checked_address_is_asked_with_the_urls_host_header(monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HostRecorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        rebinding_dns(monkeypatch, "images.example", ["127.0.0.1"])
        checked = checks_passing(monkeypatch, 1)  # 127.0.0.1 stands for a public address
        assert inputs.load_image(f"http://images.example:{port}/ok.png").size == (24, 16)
        assert checked == ["127.0.0.1"] and HostRecorder.hosts == [f"images.example:{port}"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for `name`, signed by itself (so no client trusts it), and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_tls_to_the_checked_address_names_the_urls_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TLS handshake with the checked address sends the URL's host name (SNI) and verifies the
    certificate against it: an untrusted certificate fails the fetch."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*self_signed(tmp_path, "images.example"))
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]

        def handshake() -> None:
            connection, _ = listener.accept()
            with (
                contextlib.suppress(ssl.SSLError, OSError),
                context.wrap_socket(connection, server_side=True),
            ):
                pass

        thread = threading.Thread(target=handshake, daemon=True)
        thread.start()
        rebinding_dns(monkeypatch, "images.example", ["127.0.0.1"])
        checked = checks_passing(monkeypatch, 1)  # 127.0.0.1 stands for a public address
        with pytest.raises(ImageError, match="CERTIFICATE_VERIFY_FAILED") as info:
            inputs.load_image(f"https://images.example:{port}/ok.png")
        thread.join(10)
    assert info.value.code == "fetch_failed" and checked == ["127.0.0.1"] and names == ["images.example"]


def test_only_http_urls_are_fetched(image_server: str) -> None:
    with pytest.raises(ImageError, match="is not an http"):
        inputs._check_url("http:///nohost")
    with pytest.raises(ImageError, match=r"ftp://files\.example/x\.png is not an http\(s\) URL") as info:
        inputs.load_image(f"{image_server}/redirect?to=ftp://files.example/x.png", LOCAL)
    assert info.value.code == "url_refused"


# ---- PODSTREAM_INPUT_HOSTS: the hosts (a relay on a private network) whose URLs may be private


def test_a_listed_host_may_be_private(image_server: str) -> None:
    port = int(image_server.rsplit(":", 1)[1])
    url = f"{image_server}/ok.png"
    for entries in ([f"127.0.0.1:{port}"], ["127.0.0.1"], ["relay.internal", f"127.0.0.1:{port}"]):
        allowed = Limits.from_env({"PODSTREAM_INPUT_HOSTS": ",".join(entries)})
        assert inputs.load_image(url, allowed).size == (24, 16)
    # Another port of a listed host:port, or another name of the same address: refused.
    other_port = Limits(input_hosts=(f"127.0.0.1:{port + 1 if port < 65535 else port - 1}",))
    with pytest.raises(ImageError, match=r"refused: 127\.0\.0\.1 is a loopback address") as info:
        inputs.load_image(url, other_port)
    assert info.value.code == "url_refused"
    by_name = Limits(input_hosts=(f"localhost:{port}",))
    with pytest.raises(ImageError, match="refused") as info:
        inputs.load_image(url, by_name)
    assert inputs.load_image(f"http://localhost:{port}/ok.png", by_name).size == (24, 16)
    # The scheme's own port is the one an entry with a port is compared with.
    assert inputs._listed("http://relay.internal/x", Limits(input_hosts=("relay.internal:80",)))
    assert not inputs._listed("https://relay.internal/x", Limits(input_hosts=("relay.internal:80",)))
    assert inputs._listed("http://[::1]:8700/x", Limits(input_hosts=("[0::1]:8700",)))


def test_a_redirect_from_a_listed_host_to_another_private_address_is_refused(image_server: str) -> None:
    port = int(image_server.rsplit(":", 1)[1])
    limits = Limits(input_hosts=(f"127.0.0.1:{port}",))
    assert inputs.load_image(f"{image_server}/redirect?to=/ok.png", limits).size == (24, 16)  # same host
    with serve_images() as elsewhere:
        url = f"{image_server}/redirect?to={elsewhere}/ok.png"
        with pytest.raises(ImageError, match=r"refused: 127\.0\.0\.1 is a loopback address") as info:
            inputs.load_image(url, limits)
        assert info.value.code == "url_refused" and f"GET {elsewhere}/ok.png refused" in str(info.value)
        with pytest.raises(ImageError, match="refused"):  # the same address by another name: not listed
            inputs.load_image(f"{image_server}/redirect?to=http://localhost:{port}/ok.png", limits)
        both = Limits(input_hosts=(f"127.0.0.1:{port}", elsewhere.removeprefix("http://")))
        assert inputs.load_image(url, both).size == (24, 16)


def test_the_addresses_of_a_listed_host_are_not_checked(
    image_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = checks_passing(monkeypatch, 0)
    listed = Limits(input_hosts=(image_server.removeprefix("http://"),))
    assert inputs.load_image(f"{image_server}/ok.png", listed).size == (24, 16)
    assert checked == []


# ---- the edge rules of the JSON Schema (the relay and `podstream submit` check inputs with it)


def test_the_schema_names_the_item_that_misses_its_image_or_prompt() -> None:
    from relay.api.input_schema import InputSchema

    schema = InputSchema("builtin")
    images: list[Any] = [{"image": "https://x/y.png"}] * 3
    assert schema.problem({"task": "image-to-video", "items": images}) is None
    assert schema.problem({"task": "image-to-video", "items": [*images, {"prompt": "no image"}]}) == (
        "items[3]: 'image' is a required property"
    )
    assert schema.problem({"task": "image-to-video", "items": [*images, {"image": ""}]}) == (
        "items[3].image: '' should be non-empty"
    )
    assert schema.problem({"task": "text-to-video", "items": [{"prompt": "a"}, {"prompt": ""}]}) == (
        "items[1].prompt: '' should be non-empty"
    )
    assert schema.problem({"task": "text-to-image", "items": [{"prompt": "a"}, {"image": "x"}]}) == (
        "items[1]: 'prompt' is a required property"
    )
    assert schema.problem({"task": "text-to-image", "items": [{"prompt": "a", "image_sha256": "AB"}]}) == (
        "items[0].image_sha256: 'AB' does not match '^[0-9a-f]{64}$'"
    )
    sha = hashlib.sha256(b"x").hexdigest()
    assert schema.problem({"task": "image-to-video", "items": [{"image": "x", "image_sha256": sha}]}) is None
    # A custom task has no such rule; a model's own input schema has none either.
    assert jobspec.job_schema(tasks={"upscale"}).get("allOf") is None
    assert "allOf" not in jobspec.job_schema(SeedStyle)


def test_an_input_reference_is_fetched_at_the_jobs_inputs_url() -> None:
    """`input:<sha256>` + `image_sig` + the job's `inputs.url` template: the URL, and the sha256 to check."""
    digest = "ab" * 32
    template = "https://relay.example/v1/inputs/0123/{sha256}?exp=99&sig={sig}"
    raw = {"task": "image-to-video", "inputs": {"url": template},
           "items": [{"image": f"input:{digest}", "image_sig": "c2ln"}]}  # fmt: skip
    job = parse_job(raw)
    item = job.items[0]
    assert isinstance(item, Item)
    url, expected = image_source(item, job.inputs_url)
    assert url == f"https://relay.example/v1/inputs/0123/{digest}?exp=99&sig=c2ln" and expected == digest
    plain = Item(image="https://x.example/a.png", image_sha256=digest)
    assert image_source(plain, None) == ("https://x.example/a.png", digest)


@pytest.mark.parametrize(
    ("item", "inputs_url", "message"),
    [
        (Item(image="input:" + "ab" * 32, image_sig="c2ln"), None, "needs the job's inputs.url"),
        (Item(image="input:" + "ab" * 32), "https://r/{sha256}?sig={sig}", "has no image_sig"),
        (Item(image="input:ABC", image_sig="c2ln"), "https://r/{sha256}", "64 lowercase hex"),
    ],
)
def test_a_bad_input_reference_fails_its_item(item: Item, inputs_url: str | None, message: str) -> None:
    with pytest.raises(ImageError) as info:
        image_source(item, inputs_url)
    assert info.value.code == "bad_image" and message in str(info.value)


def test_the_jobs_inputs_url_must_be_an_http_template() -> None:
    for url in ("file:///etc/{sha256}", "https://relay.example/no-placeholder"):
        with pytest.raises(JobInputError, match=r"input\.inputs\.url"):
            parse_job({"task": "image-to-video", "inputs": {"url": url}, "items": [{"image": "x"}]})
