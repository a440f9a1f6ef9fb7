"""Auth end to end: API keys, subscriber tokens, signed media URLs, Origins, limits and bad input, through
real HTTP and websocket clients against a real uvicorn relay (plus the token codec on its own)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from podstream.emulator import Emulator
from relay.api.auth import (
    AuthConfigError,
    Denied,
    decode_token,
    encode_token,
    generate_key,
    hash_key,
    parse_keys,
)
from tests.relay.conftest import (
    API_KEY,
    TOKEN_SECRET,
    Batch,
    RelayServer,
    ScriptedWorker,
    make_files,
    pack,
    recv,
    relay_settings,
    start_relay,
    ws_client,
)

READ_KEY = generate_key()  # jobs:read only
UPLOAD_KEY = generate_key()  # upload only


def keyed_settings(tmp_path: Path, emulator: Emulator | None, **changes: Any) -> Any:
    entries = (
        f"{hash_key(API_KEY)}, reader={hash_key(READ_KEY)}/jobs:read uploader={hash_key(UPLOAD_KEY)}/upload"
    )
    return relay_settings(tmp_path, emulator, api_keys=entries, **changes)


@pytest.fixture
async def relay(tmp_path: Path, emulator: Emulator) -> Any:
    server = await start_relay(keyed_settings(tmp_path, emulator))
    try:
        yield server
    finally:
        await server.stop()


def bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


async def finished_job(relay: RelayServer, worker: ScriptedWorker, files: list[bytes]) -> dict[str, Any]:
    """Submit a job with the API key, let the scripted worker deliver `files`; returns the submit answer."""
    async with relay.http() as http:
        r = await http.post(f"{relay.url}/v1/jobs", json={"input": {}})
        assert r.status_code == 201, r.text
        created: dict[str, Any] = r.json()
    taken = await worker.take()
    for envelope in Batch(taken["id"], files).envelopes:
        await worker.post(taken["id"], envelope)
    await worker.done(taken["id"])
    for _ in range(400):
        store = relay.relay.job(created["id"])
        if store is not None and store.finished:
            return created
        await asyncio.sleep(0.05)
    raise AssertionError("the job did not finish")


def forged(claims: dict[str, Any], secret: str = TOKEN_SECRET) -> str:
    return encode_token(claims, secret.encode())


def claims(job: str, **changes: Any) -> dict[str, Any]:
    return {"aud": "podstream", "exp": int(time.time()) + 600, "jobs": [job], "sub": "t", **changes}


# ------------------------------------------------------------------------------------------ the codec


def test_token_codec_pins_the_algorithm_and_checks_every_claim() -> None:
    secret = b"k" * 32
    good = encode_token(claims("j1"), secret)
    assert decode_token(good, secret, audience="podstream")["jobs"] == ["j1"]
    header, payload, signature = good.split(".")
    none_alg = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"  # {"alg":"none","typ":"JWT"}
    cases = {
        "unsigned (alg none)": f"{none_alg}.{payload}.",
        "other algorithm header": f"eyJhbGciOiJIUzUxMiIsInR5cCI6IkpXVCJ9.{payload}.{signature}",
        "tampered payload": f"{header}.{payload[:-2]}xx.{signature}",
        "wrong secret": encode_token(claims("j1"), b"x" * 32),
        "not a token": "abc",
        "jobs not a list": encode_token(claims("j1", jobs="j1"), secret),
        "no exp": encode_token({"aud": "podstream", "jobs": []}, secret),
    }
    for name, token in cases.items():
        with pytest.raises(Denied) as denied:
            decode_token(token, secret, audience="podstream")
        assert denied.value.close_code == 4501 and denied.value.status == 401, name
    with pytest.raises(Denied) as denied:
        decode_token(encode_token(claims("j1", aud="elsewhere"), secret), secret, audience="podstream")
    assert denied.value.code == "wrong_audience"
    with pytest.raises(Denied) as denied:
        decode_token(
            encode_token(claims("j1", exp=int(time.time()) - 1), secret), secret, audience="podstream"
        )
    assert denied.value.close_code == 4003 and denied.value.code == "token_expired"


def test_key_entries() -> None:
    key = generate_key()
    [entry] = parse_keys(f"ci={hash_key(key)}/jobs:read+upload")
    assert entry.name == "ci" and entry.scopes == {"jobs:read", "upload"}
    [default] = parse_keys(f"# a comment\n{hash_key(key)}\n")
    assert default.scopes == {"jobs:write", "jobs:read", "upload", "metrics"}
    with pytest.raises(AuthConfigError, match="hash, not the key"):
        parse_keys(key)  # the key itself is never configured
    with pytest.raises(AuthConfigError, match="unknown scope"):
        parse_keys(f"{hash_key(key)}/jobs:admin")


# ----------------------------------------------------------------------------------------- HTTP keys


async def test_http_needs_a_key_with_the_right_scope(relay: RelayServer) -> None:
    base = relay.url
    async with httpx.AsyncClient(timeout=30) as http:
        for headers in (
            {},
            bearer("psk_wrong"),
            {"authorization": f"Basic {API_KEY}"},
            {"authorization": "Bearer"},
        ):
            r = await http.get(f"{base}/v1/jobs", headers=headers)
            assert r.status_code == 401, headers
            assert r.json()["error"]["code"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
        r = await http.post(f"{base}/v1/jobs", json={"input": {}}, headers=bearer(READ_KEY))
        assert r.status_code == 403 and "jobs:write" in r.json()["error"]["message"]
        assert (await http.get(f"{base}/v1/jobs", headers=bearer(READ_KEY))).status_code == 200
        assert (await http.get(f"{base}/v1/jobs", headers=bearer(UPLOAD_KEY))).status_code == 403
        r = await http.delete(f"{base}/v1/jobs/some-job", headers=bearer(READ_KEY))
        assert r.status_code == 403
        r = await http.post(f"{base}/v1/jobs/some-job/attach", headers={})
        assert r.status_code == 401
        r = await http.post(f"{base}/v1/jobs/some-job/tokens", headers=bearer(UPLOAD_KEY))
        assert r.status_code == 403
        # an unknown job and a forbidden one look the same to a caller without rights
        assert (await http.get(f"{base}/v1/jobs/no-such-job")).status_code == 401
        # liveness and readiness are open
        assert (await http.get(f"{base}/healthz")).status_code == 200
        assert (await http.get(f"{base}/readyz")).json()["ready"] is True


async def test_tokens_read_their_jobs_only(relay: RelayServer, worker: ScriptedWorker) -> None:
    files = make_files(2, 20_000)
    a = await finished_job(relay, worker, files)
    b = await finished_job(relay, worker, files)
    token = a["token"]
    assert a["token_expires_at"] > time.time() + 3000  # one hour by default
    base = relay.url
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.get(f"{base}/v1/jobs/{a['id']}", headers=bearer(token))).status_code == 200
        events = await http.get(f"{base}/v1/jobs/{a['id']}/events?format=json", headers=bearer(token))
        assert events.status_code == 200 and events.json()["done"] is True
        for method, path in [
            ("GET", f"/v1/jobs/{b['id']}"),
            ("GET", f"/v1/jobs/{b['id']}/events?format=json"),
            ("GET", f"/v1/jobs/{b['id']}/media/0"),
            ("GET", "/v1/jobs"),
            ("POST", "/v1/jobs"),
            ("DELETE", f"/v1/jobs/{a['id']}"),
            ("POST", f"/v1/jobs/{a['id']}/tokens"),
            ("GET", "/metrics"),
        ]:
            r = await http.request(method, base + path, headers=bearer(token), json={"input": {}})
            assert r.status_code == 403, (method, path, r.text)
        # minted with the API key, for several jobs, with a shorter life
        r = await http.post(
            f"{base}/v1/jobs/{a['id']}/tokens",
            headers=bearer(READ_KEY),
            json={"jobs": [b["id"]], "ttl_s": 60},
        )
        assert r.status_code == 201 and r.json()["jobs"] == sorted([a["id"], b["id"]])
        assert time.time() + 50 < r.json()["expires_at"] < time.time() + 61
        both = r.json()["token"]
        assert (await http.get(f"{base}/v1/jobs/{b['id']}", headers=bearer(both))).status_code == 200
        for body in ({"ttl_s": -1}, {"jobs": "x"}, {"jobs": ["../x"]}):
            r = await http.post(f"{base}/v1/jobs/{a['id']}/tokens", headers=bearer(READ_KEY), json=body)
            assert r.status_code == 400, body
        bad = {
            "expired": (forged(claims(a["id"], exp=int(time.time()) - 5)), "token_expired"),
            "wrong audience": (forged(claims(a["id"], aud="another-relay")), "wrong_audience"),
            "other secret": (forged(claims(a["id"]), secret="z" * 40), "invalid_token"),
        }
        for name, (credential, code) in bad.items():
            r = await http.get(f"{base}/v1/jobs/{a['id']}", headers=bearer(credential))
            assert r.status_code == 401 and r.json()["error"]["code"] == code, name


# ------------------------------------------------------------------------------------ signed media


async def test_media_urls_are_signed_and_expire(relay: RelayServer, worker: ScriptedWorker) -> None:
    files = make_files(2, 30_000)
    job = (await finished_job(relay, worker, files))["id"]
    async with relay.http() as keyed:
        manifest = (await keyed.get(f"{relay.url}/v1/jobs/{job}")).json()
        assert manifest["expires_at"] == pytest.approx(manifest["finished_at"] + 3600)
    urls = [entry["url"] for entry in manifest["items"]]
    assert all("?exp=" in url and "&sig=" in url for url in urls)
    path = f"/v1/jobs/{job}/media/0"
    async with httpx.AsyncClient(timeout=30) as http:  # no header: the URL alone is enough (an <img src>)
        r = await http.get(urls[0])
        assert r.status_code == 200 and r.content == files[0]
        assert (await http.get(f"{relay.url}{path}")).status_code == 401  # unsigned, no header
        exp = int(urls[0].split("exp=")[1].split("&")[0])
        sig1 = urls[1].split("sig=")[1]
        forged_urls = {
            "bad_signature": [
                f"{relay.url}{path}?exp={exp}&sig=AAAA",
                f"{relay.url}{path}?exp={exp + 60}&sig={urls[0].split('sig=')[1]}",  # a later expiry
                f"{relay.url}{path}?exp={exp}&sig={sig1}",  # item 1's signature on item 0
                f"{relay.url}{path}?exp={exp}",
                f"{relay.url}{path}?exp=soon&sig=x",
            ],
            "url_expired": [f"{relay.url}{path}?exp=1000&sig={relay.relay.auth._signature(path, 1000)}"],
        }
        for code, bad in forged_urls.items():
            for url in bad:
                r = await http.get(url)
                assert r.status_code == 403 and r.json()["error"]["code"] == code, url
        # and the events carry signed URLs too
        token = relay.token(job)
        assert token is not None
        events = (
            await http.get(f"{relay.url}/v1/jobs/{job}/events?format=json", headers=bearer(token))
        ).json()
        item_urls = [e["url"] for e in events["events"] if e["k"] == "item"]
        assert len(item_urls) == 2 and all("&sig=" in u for u in item_urls)
        assert (await http.get(relay.url + item_urls[1])).content == files[1]


# --------------------------------------------------------------------------------------- websockets


def raw(url: str, **kwargs: Any) -> websockets.connect:
    """A websocket client that has not authenticated yet."""
    return websockets.connect(url, compression=None, max_size=2**22, **kwargs)


async def closed_with(ws: websockets.ClientConnection, code: int) -> str:
    """The socket ends with `bye code` and a close with the same code; returns the reason."""
    while (frame := await recv(ws))["t"] == "ping":
        pass
    assert frame["t"] == "bye" and frame["code"] == code, frame
    with pytest.raises(ConnectionClosed) as closed:
        await recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code
    return str(frame["reason"])


async def test_websocket_tokens(relay: RelayServer, worker: ScriptedWorker) -> None:
    job = (await finished_job(relay, worker, make_files(1, 10_000)))["id"]
    other = (await finished_job(relay, worker, make_files(1, 10_000)))["id"]
    url = relay.ws_url
    # no auth frame: a sub is refused
    async with raw(url) as ws:
        await ws.send(pack({"t": "sub", "job": job, "from": 0}))
        assert "auth" in await closed_with(ws, 4501)
    # bad tokens
    for token, code in [
        ("garbage", 4501),
        (forged(claims(job, aud="elsewhere")), 4501),
        (forged(claims(job), secret="q" * 40), 4501),
        (forged(claims(job, exp=int(time.time()) - 1)), 4003),
    ]:
        async with raw(url) as ws:
            await ws.send(pack({"t": "auth", "token": token}))
            await closed_with(ws, code)
    # in the Authorization header instead: refused at connect
    async with raw(url, additional_headers=bearer("psk_nope")) as ws:
        await closed_with(ws, 4501)
    # a token for job A never reads job B
    async with ws_client(url, relay.token(job)) as ws:
        await ws.send(pack({"t": "sub", "job": other, "from": 0}))
        frame = await recv(ws)
        assert frame["t"] == "err" and frame["code"] == "forbidden" and frame["job"] == other
        # ... nor tells whether job B exists: an unknown job gets the very same answer
        await ws.send(pack({"t": "sub", "job": "no-such-job", "from": 0}))
        unknown = await recv(ws)
        assert {**unknown, "job": other} == frame
        await ws.send(pack({"t": "sub", "job": job, "from": 0}))
        assert (await recv(ws))["t"] == "subscribed"
    # an API key with jobs:read in the header reads any job; one without is refused
    async with ws_client(url, additional_headers=bearer(READ_KEY)) as ws:
        await ws.send(pack({"t": "sub", "job": other, "from": 0}))
        assert (await recv(ws))["t"] == "subscribed"
    async with raw(url, additional_headers=bearer(UPLOAD_KEY)) as ws:
        await closed_with(ws, 4501)


async def test_token_expiry_mid_stream_and_refresh(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    relay = await start_relay(keyed_settings(tmp_path, emulator, auth_timeout_s=0.5))
    try:
        async with relay.http() as http:
            job = (await http.post(f"{relay.url}/v1/jobs", json={"input": {}})).json()["id"]
        short = relay.token(job, ttl_s=1.5)
        async with ws_client(relay.ws_url, short) as ws:
            await ws.send(pack({"t": "sub", "job": job, "from": 0}))
            assert (await recv(ws))["t"] == "subscribed"
            started = time.monotonic()
            reason = await closed_with(ws, 4003)  # the job is still running: the token ran out
            assert "new token" in reason and time.monotonic() - started < 5
        # a fresh auth frame before expiry extends the connection
        async with ws_client(relay.ws_url, relay.token(job, ttl_s=1.5)) as ws:
            await ws.send(pack({"t": "sub", "job": job, "from": 0}))
            assert (await recv(ws))["t"] == "subscribed"
            await asyncio.sleep(0.5)
            await ws.send(pack({"t": "auth", "token": relay.token(job, ttl_s=60)}))
            deadline = time.monotonic() + 2.0
            while (left := deadline - time.monotonic()) > 0:  # past the first token's expiry, still open
                try:
                    assert (await recv(ws, left))["t"] != "bye"
                except TimeoutError:
                    break
            # a refresh for another job drops this subscription
            await ws.send(pack({"t": "auth", "token": relay.token("another-job", ttl_s=60)}))
            while (frame := await recv(ws))["t"] != "err":
                pass
            assert frame["code"] == "forbidden" and frame["job"] == job
        # no auth frame at all: cut off after auth_timeout_s
        async with websockets.connect(relay.ws_url, compression=None) as ws:
            await closed_with(ws, 4501)
    finally:
        await relay.stop()


async def test_origins(tmp_path: Path, emulator: Emulator) -> None:
    settings = keyed_settings(tmp_path, emulator, allowed_origins="https://app.example.com")
    relay = await start_relay(settings)
    token = relay.token()
    try:
        for origin, allowed in [
            ("https://app.example.com", True),
            (f"http://127.0.0.1:{relay.port}", True),  # the relay's own page
            ("https://evil.example.com", False),
            ("null", False),
        ]:
            async with websockets.connect(relay.ws_url, origin=origin, compression=None) as ws:  # type: ignore[arg-type]
                if allowed:
                    await ws.send(pack({"t": "auth", "token": token}))
                    assert (await recv(ws))["t"] == "welcome", origin
                else:
                    await closed_with(ws, 4504)
    finally:
        await relay.stop()


async def test_cors(tmp_path: Path, emulator: Emulator) -> None:
    relay = await start_relay(keyed_settings(tmp_path, emulator, cors_origins="https://app.example.com"))
    try:
        async with httpx.AsyncClient() as http:
            preflight = {
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization",
            }
            ok = await http.options(
                f"{relay.url}/v1/jobs", headers={"origin": "https://app.example.com", **preflight}
            )
            assert ok.status_code == 200
            assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
            assert "authorization" in ok.headers["access-control-allow-headers"].lower()
            other = await http.options(
                f"{relay.url}/v1/jobs", headers={"origin": "https://x.test", **preflight}
            )
            assert "access-control-allow-origin" not in other.headers
    finally:
        await relay.stop()


# ------------------------------------------------------------------------------------ limits, input


async def test_a_flood_of_submissions_gets_429(tmp_path: Path, emulator: Emulator) -> None:
    relay = await start_relay(keyed_settings(tmp_path, emulator, submits_per_minute=3))
    try:
        async with relay.http() as http:
            answers = [(await http.post(f"{relay.url}/v1/jobs", json={"input": {}})) for _ in range(6)]
            assert [r.status_code for r in answers] == [201, 201, 201, 429, 429, 429]
            refused = answers[-1]
            assert refused.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(refused.headers["retry-after"]) <= 60
            metrics = (await http.get(f"{relay.url}/metrics")).text
            assert 'podstream_relay_http_rate_limited_total{action="submit"} 3.0' in metrics
        assert len(relay.relay.store.job_ids()) == 3
    finally:
        await relay.stop()


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


async def test_path_traversal_and_bad_ids_touch_nothing(relay: RelayServer, tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("do not touch")
    (tmp_path / "data" / "jobs" / "etc").mkdir()  # a plausible target inside the data dir, not a job
    before_outside = tree(tmp_path)
    base = relay.url
    bad_jobs = ["..", "%2e%2e", "%2E%2E", ".%2e", "..%2F..%2Fsecret.txt", "%2Fetc%2Fpasswd", "a%00b", "-x",
                "x" * 200, "a..b", "%2e%2e%2f%2e%2e"]  # fmt: skip
    async with relay.http() as http:
        for job in bad_jobs:
            for method, path in [
                ("GET", f"/v1/jobs/{job}"),
                ("GET", f"/v1/jobs/{job}/events?format=json"),
                ("GET", f"/v1/jobs/{job}/media/0"),
                ("POST", f"/v1/jobs/{job}/attach"),
                ("POST", f"/v1/jobs/{job}/tokens"),
                ("DELETE", f"/v1/jobs/{job}"),
            ]:
                r = await http.request(method, base + path)
                assert r.status_code in (400, 404, 405), (method, path, r.status_code)
                if r.status_code == 400:
                    assert r.json()["error"]["code"] == "bad_job_id"
        for item in ["..", "%2e%2e", "-1", "1.5", "%00", "../../secret.txt", "99999999999"]:
            r = await http.get(f"{base}/v1/jobs/some-job/media/{item}")
            assert r.status_code in (400, 404), item
        # absolute paths never reach a handler as ids
        r = await http.get(f"{base}/v1/jobs//etc/passwd")
        assert r.status_code == 404
        async with ws_client(relay.ws_url, relay.token("ok-job")) as ws:
            for job in ["..", "../../secret", "/etc/passwd", "a\x00b", ""]:
                await ws.send(pack({"t": "sub", "job": job, "from": 0}))
                frame = await recv(ws)
                assert frame["t"] == "err" and frame["code"] == "bad_job", job
    assert tree(tmp_path) == before_outside  # nothing written, created or removed anywhere
    assert outside.read_text() == "do not touch"
    assert relay.relay.store.job_ids() == []


async def test_oversize_bodies_and_frames(tmp_path: Path, emulator: Emulator) -> None:
    relay = await start_relay(keyed_settings(tmp_path, emulator, max_submit_bytes=1000))
    try:
        async with relay.http() as http:
            r = await http.post(f"{relay.url}/v1/jobs", json={"input": {"x": "y" * 2000}})
            assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
            r = await http.post(f"{relay.url}/v1/jobs/j/tokens", content=b"{" + b" " * 70_000 + b"}")
            assert r.status_code == 413
        # before auth too: an oversize first frame is refused with 4502, not read as a token
        async with websockets.connect(relay.ws_url, compression=None) as ws:
            await ws.send(pack({"t": "auth", "token": "x" * 70_000}))
            await closed_with(ws, 4502)
        async with websockets.connect(relay.ws_url, compression=None) as ws:
            await ws.send(b"\x93\x01\x02")  # msgpack, but not a map
            await closed_with(ws, 4500)
        async with websockets.connect(relay.ws_url, compression=None) as ws:
            await ws.send(pack({"t": "auth", "token": 42}))  # wrongly typed
            await closed_with(ws, 4500)
    finally:
        await relay.stop()


# ------------------------------------------------------------------------------------ insecure mode


async def test_insecure_mode_is_open(tmp_path: Path, emulator: Emulator) -> None:
    relay = await start_relay(relay_settings(tmp_path, emulator, api_keys="", insecure=True))
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            created = (await http.post(f"{relay.url}/v1/jobs", json={"input": {}})).json()
            assert "token" not in created
            r = await http.post(f"{relay.url}/v1/jobs/{created['id']}/tokens")
            assert r.status_code == 404 and r.json()["error"]["code"] == "no_auth"
            assert (await http.get(f"{relay.url}/v1/jobs")).status_code == 200
            assert (await http.get(f"{relay.url}/metrics")).status_code == 200
        async with ws_client(relay.ws_url) as ws:  # welcome without auth
            await ws.send(pack({"t": "sub", "job": created["id"], "from": 0}))
            assert (await recv(ws))["t"] == "subscribed"
    finally:
        await relay.stop()


def test_no_keys_no_relay(tmp_path: Path) -> None:
    from relay.api.app import create_app
    from relay.config import ConfigError, RelaySettings

    with pytest.raises(ConfigError, match="no API keys configured"):
        create_app(RelaySettings(data_dir=tmp_path))
    with pytest.raises(ConfigError, match="PODSTREAM_API_KEYS"):
        create_app(RelaySettings(data_dir=tmp_path, api_keys=API_KEY))  # the key, not its hash
    with pytest.raises(ConfigError, match="32 bytes"):
        create_app(RelaySettings(data_dir=tmp_path, api_keys=hash_key(API_KEY), token_secret="short"))
    create_app(RelaySettings(data_dir=tmp_path, api_keys=hash_key(API_KEY)))
    secret = tmp_path / "token-secret"
    assert len(secret.read_bytes().strip()) >= 32 and (secret.stat().st_mode & 0o777) == 0o600


async def test_the_relays_own_origin_has_its_scheme(tmp_path: Path, emulator: Emulator) -> None:
    """The relay's own origin is the scheme and Host it was reached with: a page on http:// is not the own
    origin of a relay reached over https:// (behind a TLS proxy, whose X-Forwarded-Proto uvicorn trusts from
    FORWARDED_ALLOW_IPS, 127.0.0.1 by default), nor one on https:// that of a relay reached over http://."""
    relay = await start_relay(keyed_settings(tmp_path, emulator))
    token = relay.token()
    plain, tls = f"http://127.0.0.1:{relay.port}", f"https://127.0.0.1:{relay.port}"
    try:
        for proto, origin, allowed in [
            (None, plain, True), (None, f"{plain}/", True), (None, f"HTTP://127.0.0.1:{relay.port}", True),
            (None, tls, False), ("https", tls, True), ("https", plain, False),
            (None, f"http://127.0.0.1:{relay.port + 1}", False), (None, "http://127.0.0.1", False),
        ]:  # fmt: skip
            extra = {"x-forwarded-proto": proto} if proto else {}
            async with websockets.connect(
                relay.ws_url,
                origin=Origin(origin),
                additional_headers=extra,
                compression=None,
            ) as ws:
                if allowed:
                    await ws.send(pack({"t": "auth", "token": token}))
                    assert (await recv(ws))["t"] == "welcome", (proto, origin)
                else:
                    await closed_with(ws, 4504)
        # A client cannot name the relay's own origin for it.
        spoof = {"x-podstream-own-origin": tls}
        async with websockets.connect(
            relay.ws_url,
            origin=Origin(tls),
            additional_headers=spoof,
            compression=None,
        ) as ws:
            await closed_with(ws, 4504)
    finally:
        await relay.stop()
    insecure = await start_relay(relay_settings(tmp_path / "insecure", emulator, api_keys="", insecure=True))
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            url = f"{insecure.url}/v1/jobs"
            for origin, status in [(insecure.url, 201), (insecure.url.replace("http:", "https:"), 403)]:
                headers = {"origin": origin, "content-type": "text/plain"}
                r = await http.post(url, content=b'{"input": {}}', headers=headers)
                assert r.status_code == status, (origin, r.text)
    finally:
        await insecure.stop()


async def test_insecure_mode_refuses_cross_site_writes(tmp_path: Path, emulator: Emulator) -> None:
    """Issue 12 item 6 (CSRF): without auth, a page on another site must not submit (and spend the RunPod
    key), cancel or open websockets; the relay's own page, allow-listed origins and non-browsers may."""
    settings = relay_settings(
        tmp_path, emulator, api_keys="", insecure=True, allowed_origins="https://app.example",
        cors_origins="https://dash.example",
    )  # fmt: skip
    relay = await start_relay(settings)
    evil = {"origin": "https://evil.example", "content-type": "text/plain"}
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            runs = emulator.stats()["routes"].get("run", {}).get("requests", 0)
            r = await http.post(f"{relay.url}/v1/jobs", content=b'{"input": {}}', headers=evil)
            assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed", r.text
            assert emulator.stats()["routes"].get("run", {}).get("requests", 0) == runs  # nothing submitted
            for origin in (relay.url, "https://app.example", "https://dash.example", None):
                headers = {"content-type": "text/plain"} | ({"origin": origin} if origin else {})
                r = await http.post(f"{relay.url}/v1/jobs", content=b'{"input": {}}', headers=headers)
                assert r.status_code == 201, (origin, r.text)
            job = r.json()["id"]
            for method, path in (("DELETE", f"/v1/jobs/{job}"), ("POST", f"/v1/jobs/{job}/attach")):
                r = await http.request(method, relay.url + path, headers=evil)
                assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed", path
            r = await http.get(f"{relay.url}/v1/jobs/{job}", headers={"origin": "https://evil.example"})
            assert r.status_code == 200  # reads stay open (the browser's CORS keeps the answer from evil)
        async with raw(relay.ws_url, origin="https://evil.example") as ws:
            await closed_with(ws, 4504)
        async with ws_client(relay.ws_url, origin=relay.url) as ws:
            await ws.send(pack({"t": "sub", "job": job, "from": 0}))
            assert (await recv(ws))["t"] == "subscribed"
    finally:
        await relay.stop()
