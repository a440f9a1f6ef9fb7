"""Staged job inputs through real HTTP (`PUT /v1/inputs`, lookups, input tokens, the signed fetch URL) and
`POST /v1/jobs` sending images to RunPod by reference: on local disk and as a cluster replica (Redis + S3),
every hostile request refused with its documented status and nothing left behind."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from podstream.emulator import Emulator
from relay.api.auth import generate_key, hash_key
from relay.storage.input_store import owner_of
from tests.relay.conftest import (
    API_KEY,
    BUCKET_BACKENDS,
    RelayServer,
    ScriptedWorker,
    backend_cluster,
    relay_settings,
    start_relay,
)
from tests.relay.storage.cluster.test_replica import sigv4_method

OTHER_KEY = generate_key()
READER_KEY = generate_key()
KEYS = f"{hash_key(API_KEY)},other={hash_key(OTHER_KEY)},reader={hash_key(READER_KEY)}/jobs:read"


@pytest.fixture(params=BUCKET_BACKENDS)  # on moto and s3rver: staged inputs live in the bucket
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def png(seed: int, side: int = 64) -> bytes:
    """A distinct PNG per seed (random pixels: nothing compresses away)."""
    rng = bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[0] for i in range(side * side * 3))
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), rng).save(out, "PNG")
    return out.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


async def start(tmp_path: Path, emulator: Emulator, backend: str, stack: Any, **changes: Any) -> RelayServer:
    cluster = stack.enter_context(backend_cluster(backend, tmp_path))
    settings = relay_settings(tmp_path, emulator, api_keys=KEYS, input_schema="builtin", **changes)
    return await start_relay(settings, cluster)


@pytest.fixture
async def relay(tmp_path: Path, emulator: Emulator, backend: str) -> Any:
    import contextlib

    with contextlib.ExitStack() as stack:
        server = await start(tmp_path, emulator, backend, stack)
        try:
            yield server
        finally:
            await server.stop()


def leftovers(relay: RelayServer) -> list[str]:
    """Spool files anywhere under the data directory (an upload refused must leave none)."""
    root = Path(relay.settings.data_dir)
    return [str(p) for p in root.rglob("*.part")]


async def test_stage_look_up_and_fetch_an_input(relay: RelayServer) -> None:
    data = png(1)
    async with relay.http() as http:
        r = await http.put(f"{relay.url}/v1/inputs", content=data, headers={"x-podstream-sha256": sha(data)})
        assert r.status_code == 201, r.text
        staged = r.json()
        assert staged["ref"] == f"input:{sha(data)}" and staged["sha256"] == sha(data)
        assert staged["bytes"] == len(data) and staged["mime"] == "image/png"
        assert staged["expires_at"] > time.time() + relay.settings.input_url_ttl_s - 120
        again = await http.put(f"{relay.url}/v1/inputs", content=data)  # no header: read, hashed, found
        assert again.status_code == 200 and again.json()["ref"] == staged["ref"]
        named = {"x-podstream-sha256": sha(data)}  # held: answered without storing anything
        for _ in range(2):  # and the connection stays usable
            r = await http.put(f"{relay.url}/v1/inputs", content=data, headers=named)
            assert r.status_code == 200 and r.json()["ref"] == staged["ref"]
        head = await http.head(f"{relay.url}/v1/inputs/{sha(data)}")
        assert head.status_code == 200
        looked_up = await http.get(f"{relay.url}/v1/inputs/{sha(data)}")
        assert looked_up.status_code == 200 and looked_up.json()["sha256"] == sha(data)
    async with httpx.AsyncClient(timeout=10, follow_redirects=True) as anonymous:  # the worker has no key
        fetched = await anonymous.get(staged["url"])
        assert fetched.status_code == 200 and fetched.content == data
        assert fetched.headers["content-type"] == "image/png"
    assert leftovers(relay) == []
    assert relay.relay.input_quota.used(owner_of("key-" + hash_key(API_KEY)[7:15])) == len(data)


async def test_a_batch_lookup_says_what_the_key_holds(relay: RelayServer) -> None:
    """`POST /v1/inputs/lookup`: one request for a batch's sha256, each held one described as GET describes
    it (and its expiry restarted), the others missing; another key's inputs are missing to this one."""
    a, b, c = png(60), png(61), png(62)
    lookup = f"{relay.url}/v1/inputs/lookup"
    async with relay.http() as http:
        staged = [(await http.put(f"{relay.url}/v1/inputs", content=d)).json() for d in (a, b)]
        if relay.relay.replica is None:  # staged long ago: the lookup restarts their expiry
            for data in (a, b):
                path = Path(relay.settings.data_dir) / "inputs" / staged[0]["url"].split("/")[-2] / sha(data)
                os.utime(path, (time.time() - 10 * 86400, time.time() - 10 * 86400))
        asked = [sha(c), sha(a), sha(b).upper(), sha(a)]
        r = await http.post(lookup, json={"sha256": asked})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["missing"] == [sha(c)]
        assert list(answer["held"]) == [sha(a), sha(b)]
        for data, one in zip((a, b), staged, strict=True):
            held = answer["held"][sha(data)]
            assert {k: held[k] for k in ("ref", "sha256", "bytes", "mime")} == {
                k: one[k] for k in ("ref", "sha256", "bytes", "mime")
            }
            assert held["expires_at"] > time.time() + relay.settings.input_url_ttl_s - 120
        async with httpx.AsyncClient(timeout=10, follow_redirects=True) as anonymous:
            assert (await anonymous.get(answer["held"][sha(a)]["url"])).content == a
        if relay.relay.replica is None:
            later = time.time() + relay.settings.input_ttl_s - 60
            assert await asyncio.to_thread(relay.relay.retention.sweep_inputs, later) == 0
        assert (await http.post(lookup, json={"sha256": []})).json() == {"held": {}, "missing": []}
        bad_bodies: list[tuple[int, str, dict[str, Any]]] = [
            (400, "bad_json", {"content": b"not json"}),
            (400, "bad_json", {"content": b""}),
            (400, "bad_json", {"content": b'{"sha256": [NaN]}'}),
            (400, "bad_json", {"json": ["0" * 64]}),
            (400, "bad_json", {"json": {"sha256": "0" * 64}}),
            (400, "bad_json", {"json": {"sha": ["0" * 64]}}),
            (400, "bad_sha256", {"json": {"sha256": ["0" * 63]}}),
            (400, "bad_sha256", {"json": {"sha256": [sha(a), 7]}}),
            (413, "too_large", {"json": {"sha256": [sha(a)] * 1001}}),
            (413, "too_large", {"json": {"sha256": [sha(a)] * 2000}}),
        ]
        for status, code, kwargs in bad_bodies:
            r = await http.post(lookup, **kwargs)
            assert r.status_code == status and r.json()["error"]["code"] == code, (kwargs, r.text)
        assert (await http.post(lookup, json={"sha256": [sha(a)] * 1000})).status_code == 200
        assert (await http.get(lookup)).status_code == 400  # GET /v1/inputs/<sha256>: not one
    async with httpx.AsyncClient(timeout=10, headers=bearer(OTHER_KEY)) as other:
        r = await other.post(lookup, json={"sha256": [sha(a), sha(b)]})
        assert r.status_code == 200 and r.json() == {"held": {}, "missing": [sha(a), sha(b)]}
    async with httpx.AsyncClient(timeout=10, headers=bearer(READER_KEY)) as reader:  # no jobs:write
        assert (await reader.post(lookup, json={"sha256": [sha(a)]})).status_code == 403
    async with httpx.AsyncClient(timeout=10) as nobody:
        assert (await nobody.post(lookup, json={"sha256": [sha(a)]})).status_code == 401
    async with relay.http() as http:  # an input token looks up its minting key's inputs
        token = (await http.post(f"{relay.url}/v1/inputs/tokens", json={})).json()["token"]
    async with httpx.AsyncClient(timeout=10, headers=bearer(token)) as browser:
        r = await browser.post(lookup, json={"sha256": [sha(a), sha(c)]})
        assert r.status_code == 200 and list(r.json()["held"]) == [sha(a)] and r.json()["missing"] == [sha(c)]
    assert leftovers(relay) == []


async def test_inputs_of_one_key_are_invisible_to_another(relay: RelayServer, worker: ScriptedWorker) -> None:
    data = png(2)
    async with relay.http() as http:
        staged = (await http.put(f"{relay.url}/v1/inputs", content=data)).json()
    async with httpx.AsyncClient(timeout=10, headers=bearer(OTHER_KEY)) as other:
        assert (await other.head(f"{relay.url}/v1/inputs/{sha(data)}")).status_code == 404
        job = {"task": "image-to-video", "items": [{"id": "a", "image": staged["ref"]}]}
        r = await other.post(f"{relay.url}/v1/jobs", json={"input": job})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (
            error["code"] == "bad_input"
            and "input.items[0].image: this key holds no input" in error["message"]
        )
        # Its own upload of the same bytes is its own input (and costs its own quota).
        assert (await other.put(f"{relay.url}/v1/inputs", content=data)).status_code == 201
    async with httpx.AsyncClient(timeout=10, headers=bearer(READER_KEY)) as reader:  # no jobs:write
        assert (await reader.put(f"{relay.url}/v1/inputs", content=data)).status_code == 403
    async with httpx.AsyncClient(timeout=10) as nobody:
        assert (await nobody.put(f"{relay.url}/v1/inputs", content=data)).status_code == 401


async def test_submit_sends_references_to_runpod(relay: RelayServer, worker: ScriptedWorker) -> None:
    """The built-in worker gets compact references: the item's `input:<sha256>` and its signature, and one
    URL template for the job; each filled-in URL serves that image to anyone (the worker has no key)."""
    images = [png(10 + k) for k in range(3)]
    big = png(20, side=160)
    async with relay.http() as http:
        refs = [(await http.put(f"{relay.url}/v1/inputs", content=d)).json()["ref"] for d in images]
        big_inline = "data:image/png;base64," + base64.b64encode(big).decode()
        assert len(big_inline) > relay.settings.stage_inline_bytes
        small_inline = "data:image/png;base64," + base64.b64encode(png(21, side=8)).decode()
        items = [{"id": f"i{k}", "image": ref} for k, ref in enumerate(refs)]
        items += [{"id": "big", "image": big_inline}, {"id": "small", "image": small_inline}]
        r = await http.post(
            f"{relay.url}/v1/jobs", json={"input": {"task": "image-to-video", "items": items}}
        )
        assert r.status_code == 201, r.text
        job = await worker.take()
        sent = job["input"]["items"]
        template = job["input"]["inputs"]["url"]
        assert (
            template.startswith(f"{relay.url}/v1/inputs/") and "{sha256}" in template and "{sig}" in template
        )
        assert len(json.dumps(job["input"])) < 2_000  # the big inline image left the body
        expected = [*images, big]
        for k, data in enumerate(expected):
            assert sent[k]["image"] == f"input:{sha(data)}" and "image_sha256" not in sent[k]
        assert [item["id"] for item in sent] == ["i0", "i1", "i2", "big", "small"]
        assert sent[4] == {"id": "small", "image": small_inline}  # small enough to travel inline
        async with httpx.AsyncClient(timeout=10, follow_redirects=True) as anonymous:
            for entry, data in zip(sent, expected, strict=False):
                url = template.replace("{sha256}", sha(data)).replace("{sig}", entry["image_sig"])
                fetched = await anonymous.get(url)
                assert fetched.status_code == 200 and fetched.content == data
            head = template.replace("{sha256}", sha(images[0])).replace("{sig}", sent[0]["image_sig"])
            if relay.relay.replica is None:
                assert (await anonymous.head(head)).headers["content-length"] == str(len(images[0]))
            else:  # redirected to the bucket, with a URL signed for HEAD (SigV4 signs the method)
                moved = await anonymous.head(head, follow_redirects=False)
                assert moved.status_code == 302 and sigv4_method(moved.headers["location"]) == "HEAD"
                assert (
                    sigv4_method((await anonymous.get(head, follow_redirects=False)).headers["location"])
                    == "GET"
                )
            other = template.replace("{sha256}", sha(images[0])).replace("{sig}", sent[1]["image_sig"])
            assert (await anonymous.get(other)).status_code == 403  # a signature is good for its own image
        store = relay.relay.job(r.json()["id"])
        assert len(store.meta["inputs"]) == 4
        await worker.done(job["id"])


async def test_other_workers_get_plain_urls(
    tmp_path: Path, emulator: Emulator, worker: ScriptedWorker
) -> None:
    """A worker with its own input schema (or none) gets a URL any HTTP client can fetch, and the sha256."""
    relay = await start_relay(relay_settings(tmp_path, emulator, api_keys=KEYS, input_schema="off"))
    try:
        data = png(40)
        async with relay.http() as http:
            ref = (await http.put(f"{relay.url}/v1/inputs", content=data)).json()["ref"]
            r = await http.post(f"{relay.url}/v1/jobs", json={"input": {"items": [{"image": ref}]}})
            assert r.status_code == 201, r.text
        job = await worker.take()
        item = job["input"]["items"][0]
        assert item["image_sha256"] == sha(data) and "inputs" not in job["input"]
        async with httpx.AsyncClient(timeout=10) as anonymous:
            assert (await anonymous.get(item["image"])).content == data
        await worker.done(job["id"])
    finally:
        await relay.stop()


async def test_hostile_uploads_are_refused_and_leave_nothing(
    tmp_path: Path, emulator: Emulator, backend: str
) -> None:
    import contextlib

    with contextlib.ExitStack() as stack:
        relay = await start(
            tmp_path, emulator, backend, stack, max_input_bytes=50_000, input_quota_bytes=60_000
        )
        try:
            async with relay.http() as http:
                url = f"{relay.url}/v1/inputs"
                cases: list[tuple[str, int, str, Any]] = [
                    ("not an image", 415, "unsupported_media_type", {"content": b"%PDF-1.4 " * 100}),
                    ("tiny non-image", 415, "unsupported_media_type", {"content": b"GIF"}),
                    ("empty", 400, "empty", {"content": b""}),
                    ("declared too large", 413, "too_large", {"content": png(3, side=160)}),
                    ("chunked too large", 413, "too_large", {"content": _chunks(png(3, side=160))}),
                    ("wrong sha", 422, "sha256_mismatch",
                     {"content": png(4), "headers": {"x-podstream-sha256": "0" * 64}}),
                    ("bad sha", 400, "bad_sha256", {"content": png(4), "headers": {"x-podstream-sha256": "xyz"}}),
                ]  # fmt: skip
                for name, status, code, kwargs in cases:
                    r = await http.put(url, **kwargs)
                    assert r.status_code == status, (name, r.text)
                    assert r.json()["error"]["code"] == code, (name, r.text)
                first = await http.put(url, content=png(5, side=100))
                assert first.status_code == 201, first.text
                over = await http.put(url, content=png(6, side=100))  # two of them pass 60,000 bytes
                assert over.status_code == 507 and over.json()["error"]["code"] == "quota_exceeded", over.text
                held = png(5, side=100)  # bytes the key holds take no more quota: found, not refused
                again = await http.put(url, content=held, headers={"x-podstream-sha256": sha(held)})
                assert again.status_code == 200 and again.json()["sha256"] == sha(held), again.text
                assert (await http.head(f"{url}/{sha(png(6, side=100))}")).status_code == 404
                for bad in ("tokens", "x" * 64, "..%2F..%2Fjobs"):
                    assert (await http.get(f"{url}/{bad}")).status_code in (400, 404, 405)
            async with httpx.AsyncClient(timeout=10) as anonymous:
                staged_sha = sha(png(5, side=100))
                owner = owner_of("key-" + hash_key(API_KEY)[7:15])
                for path in (f"/v1/inputs/{owner}/{staged_sha}", f"/v1/inputs/..%2F..%2Fjobs/{staged_sha}",
                             f"/v1/inputs/{'0' * 20}/{staged_sha}?exp=9999999999&sig=forged"):  # fmt: skip
                    r = await anonymous.get(relay.url + path)
                    assert r.status_code in (401, 403, 404), (path, r.text)
            assert leftovers(relay) == []
        finally:
            await relay.stop()


async def _chunks(data: bytes) -> Any:
    for start in range(0, len(data), 8192):
        yield data[start : start + 8192]


# The relay's own signed URLs; in cluster mode it hands out presigned bucket URLs, which the bucket checks.
@pytest.mark.parametrize("backend", ["disk"])
async def test_signed_urls_expire_and_cannot_be_forged(relay: RelayServer) -> None:
    data = png(7)
    async with relay.http() as http:
        staged = (await http.put(f"{relay.url}/v1/inputs", content=data)).json()
    async with httpx.AsyncClient(timeout=10) as anonymous:
        forged = staged["url"].replace(sha(data), sha(png(8)))
        r = await anonymous.get(forged)
        assert r.status_code == 403 and r.json()["error"]["code"] == "bad_signature"
        auth = relay.relay.auth
        real_clock = auth.clock
        auth.clock = lambda: real_clock() + relay.settings.input_url_ttl_s + 120
        try:
            r = await anonymous.get(staged["url"])
            assert r.status_code == 403 and r.json()["error"]["code"] == "url_expired"
        finally:
            auth.clock = real_clock


async def test_input_tokens_stage_inputs_and_nothing_else(relay: RelayServer, worker: ScriptedWorker) -> None:
    async with relay.http() as http:
        r = await http.post(f"{relay.url}/v1/inputs/tokens", json={"ttl_s": 600})
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        assert r.json()["expires_at"] <= time.time() + 601
    data = png(9)
    async with httpx.AsyncClient(timeout=10, headers=bearer(token)) as browser:
        staged = await browser.put(f"{relay.url}/v1/inputs", content=data)
        assert staged.status_code == 201, staged.text
        job = {"task": "image-to-video", "items": [{"image": staged.json()["ref"]}]}
        assert (await browser.post(f"{relay.url}/v1/jobs", json={"input": job})).status_code == 403
        assert (await browser.get(f"{relay.url}/v1/jobs")).status_code == 403
        assert (await browser.post(f"{relay.url}/v1/inputs/tokens", json={})).status_code == 403
    async with relay.http() as http:  # staged under the minting key: its backend submits the refs
        assert (await http.head(f"{relay.url}/v1/inputs/{sha(data)}")).status_code == 200
        r = await http.post(f"{relay.url}/v1/jobs", json={"input": job})
        assert r.status_code == 201, r.text
        await worker.done((await worker.take())["id"])


async def test_submit_refuses_what_cannot_reach_runpod(tmp_path: Path, emulator: Emulator) -> None:
    relay = await start_relay(
        relay_settings(tmp_path, emulator, input_schema="builtin", max_input_bytes=100_000)
    )
    try:
        runs = emulator.stats()["routes"].get("run", {}).get("requests", 0)
        async with relay.http() as http:
            not_image = "data:image/png;base64," + base64.b64encode(os.urandom(70_000)).decode()
            too_big = "data:image/png;base64," + base64.b64encode(png(1, side=256)).decode()
            cases = [
                ("no image", {"task": "image-to-video", "items": [{"id": "a", "image": "input:" + "a" * 64}, {"id": "b"}]},
                 400, "bad_input", "items[1]"),
                ("no prompt", {"task": "text-to-image", "items": [{"prompt": "x"}, {"prompt": ""}]},
                 400, "bad_input", "items[1]"),
                ("bad ref", {"task": "image-to-video", "items": [{"image": "input:nothex"}]},
                 400, "bad_input", "input.items[0].image: a reference is"),
                ("unknown ref", {"task": "image-to-video", "items": [{"image": "input:" + "b" * 64}]},
                 400, "bad_input", "input.items[0].image: this key holds no input"),
                ("inline non-image", {"task": "image-to-video", "items": [{"image": not_image}]},
                 415, "unsupported_media_type", "input.items[0].image: a job input must be an image"),
                ("inline too large", {"task": "image-to-video", "items": [{"image": too_big}]},
                 413, "too_large", "input.items[0].image"),
                ("inline not base64", {"task": "image-to-video", "items": [{"image": "!" * 70_000}]},
                 400, "bad_input", "input.items[0].image: neither"),
            ]  # fmt: skip
            for name, job, status, code, message in cases:
                r = await http.post(f"{relay.url}/v1/jobs", json={"input": job})
                assert r.status_code == status, (name, r.text)
                error = r.json()["error"]
                assert error["code"] == code and message in error["message"], (name, error)
        assert emulator.stats()["routes"].get("run", {}).get("requests", 0) == runs
        assert leftovers(relay) == []
    finally:
        await relay.stop()


async def test_a_job_input_over_runpods_cap_is_refused_when_not_staged(
    tmp_path: Path, emulator: Emulator
) -> None:
    """A worker with its own schema gets its input as it is: over 10 MB, the relay says so (RunPod would)."""
    relay = await start_relay(relay_settings(tmp_path, emulator, input_schema="off"))
    try:
        async with relay.http() as http:
            r = await http.post(f"{relay.url}/v1/jobs", json={"input": {"blob": "x" * 10_500_000}})
            assert r.status_code == 413, r.text
            assert r.json()["error"]["code"] == "input_too_large"
            assert "PUT /v1/inputs" in r.json()["error"]["message"]
    finally:
        await relay.stop()


async def test_inputs_live_as_long_as_the_jobs_that_refer_to_them(
    relay: RelayServer, worker: ScriptedWorker
) -> None:
    held_data, loose_data = png(30), png(31)
    async with relay.http() as http:
        held = (await http.put(f"{relay.url}/v1/inputs", content=held_data)).json()
        await http.put(f"{relay.url}/v1/inputs", content=loose_data)
        r = await http.post(
            f"{relay.url}/v1/jobs",
            json={"input": {"task": "image-to-video", "items": [{"image": held["ref"]}]}},
        )
        assert r.status_code == 201, r.text
        job = await worker.take()
        later = time.time() + relay.settings.input_ttl_s + 60
        removed = await asyncio.to_thread(relay.relay.retention.sweep_inputs, later)
        assert removed == 1  # the loose one; the job's input stays while the job is kept
        assert (await http.head(f"{relay.url}/v1/inputs/{sha(loose_data)}")).status_code == 404
        assert (await http.head(f"{relay.url}/v1/inputs/{sha(held_data)}")).status_code == 200
        await worker.done(job["id"])
        for _ in range(200):
            store = relay.relay.job(r.json()["id"])
            if store is not None and store.finished:
                break
            await asyncio.sleep(0.05)
        relay.relay.remove_job(r.json()["id"], "expired")  # its retention ended
        for _ in range(100):
            if r.json()["id"] not in relay.relay.store.job_ids():
                break
            await asyncio.sleep(0.05)
        assert await asyncio.to_thread(relay.relay.retention.sweep_inputs, later) == 1
        assert (await http.head(f"{relay.url}/v1/inputs/{sha(held_data)}")).status_code == 404


async def test_directories_removed_behind_the_relay_are_made_again(
    tmp_path: Path, emulator: Emulator
) -> None:
    """Directories are made when a file's creation finds them missing (not on every upload)."""
    import shutil

    relay = await start_relay(relay_settings(tmp_path, emulator, api_keys=KEYS))
    try:
        async with relay.http() as http, httpx.AsyncClient(timeout=10) as anonymous:
            first = await http.put(f"{relay.url}/v1/inputs", content=png(50))
            assert first.status_code == 201, first.text
            shutil.rmtree(Path(relay.settings.data_dir) / "inputs")
            for seed in (51, 52):
                r = await http.put(f"{relay.url}/v1/inputs", content=png(seed))
                assert r.status_code == 201, r.text
                assert (await anonymous.get(r.json()["url"])).content == png(seed)
        assert leftovers(relay) == []
    finally:
        await relay.stop()


async def test_a_new_keys_first_uploads_at_once_all_land(relay: RelayServer) -> None:
    """The first inputs of a key, uploaded in parallel, race to make its directory: every one is stored."""
    images = [png(70 + k, side=32) for k in range(12)]
    async with relay.http() as http:
        answers = await asyncio.gather(*(http.put(f"{relay.url}/v1/inputs", content=d) for d in images))
        assert [r.status_code for r in answers] == [201] * len(images), [r.text for r in answers]
        r = await http.post(f"{relay.url}/v1/inputs/lookup", json={"sha256": [sha(d) for d in images]})
        assert r.json()["missing"] == [] and len(r.json()["held"]) == len(images)
    assert leftovers(relay) == []


async def test_a_cancelled_hop_waits_for_its_thread() -> None:
    """What cleans up after a hop (discarding the spool file) never runs beside it: cancelled, the hop still
    waits for its thread to finish before it raises."""
    import threading

    from relay.api.inputs import _hop

    release = threading.Event()
    finished: list[str] = []

    def blocking() -> None:
        release.wait(5)
        finished.append("thread")

    task = asyncio.ensure_future(_hop(blocking))
    await asyncio.sleep(0.05)
    task.cancel()
    await asyncio.sleep(0.05)
    assert not task.done()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished == ["thread"]
