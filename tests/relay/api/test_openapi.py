"""relay.api.openapi: `/openapi.json` is served, is a valid OpenAPI document, and describes exactly the app's routes."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import schemathesis
from schemathesis.core.result import Ok
from starlette.routing import Route

from podstream import wire
from relay.api import openapi
from relay.api.app import create_app
from relay.config import RelaySettings
from relay.storage.job import Kind
from tests.relay.conftest import RelayServer, ScriptedWorker, make_files, sha

#: Routes that are not part of the HTTP API: the demo page (static files are a Mount, the websocket a
#: WebSocketRoute, neither a Route).
NOT_API = {"/"}


#: The routes whose HEAD is part of the API (a client asks it for the headers, or whether a thing is held);
#: Starlette answers HEAD on every other GET route too, which the document leaves out.
HEAD_ROUTES = {"/v1/jobs/{job}/media/{item}", "/v1/inputs/{sha256}", "/v1/inputs/{owner}/{sha256}"}


def routes_of_the_app(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(RelaySettings(data_dir=tmp_path, insecure=True))
    found = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path not in NOT_API:
            for method in route.methods or ():
                if method != "HEAD" or route.path in HEAD_ROUTES:  # Starlette adds HEAD to every GET
                    found.add((route.path, method.lower()))
    return found


def test_the_document_describes_exactly_the_routes(tmp_path: Path) -> None:
    documented = {(path, method) for path, ops in openapi.paths().items() for method in ops}
    actual = routes_of_the_app(tmp_path)
    assert actual - documented == set(), "routes missing from relay/api/openapi.py"
    assert documented - actual == set(), "relay/api/openapi.py describes routes the app does not have"
    assert {path for path, method in documented if method == "head"} == HEAD_ROUTES
    for path, ops in openapi.paths().items():
        for method, op in ops.items():
            params = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert params == set(Route(path, lambda r: None).param_convertors), (method, path)
            assert op["responses"] and op["summary"], (method, path)


def test_the_document_loads_as_openapi() -> None:
    schema = schemathesis.openapi.from_dict(openapi.document())
    operations = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert len(operations) == sum(len(ops) for ops in openapi.paths().values())


async def test_served_without_credentials(relay_server: RelayServer) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(f"{relay_server.url}/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == openapi.document()


def test_media_declares_head_ranges_conditionals_redirects_and_the_items_types() -> None:
    ops = openapi.paths()["/v1/jobs/{job}/media/{item}"]
    assert set(ops) == {"get", "head"}
    for method, op in ops.items():
        headers = {p["name"] for p in op["parameters"] if p["in"] == "header"}
        assert {"range", "if-none-match", "if-range"} <= headers, method
        assert {"200", "206", "302", "304", "416"} <= set(op["responses"]), method
        assert "Location" in op["responses"]["302"]["headers"]
        assert op["responses"]["416"]["headers"]["Content-Range"]
    get, head = ops["get"], ops["head"]
    assert {"image/png", "image/webp", "image/jpeg", "video/mp4"} <= set(get["responses"]["200"]["content"])
    assert get["responses"]["206"]["content"] == get["responses"]["200"]["content"]
    assert not any("content" in response for response in head["responses"].values()), "HEAD has no body"
    assert "--media-redirect" in get["responses"]["302"]["description"]


def test_the_events_and_the_manifest_have_real_schemas() -> None:
    events = openapi.paths()["/v1/jobs/{job}/events"]["get"]["responses"]["200"]["content"]
    assert set(events) == {"text/event-stream", "application/json"}
    assert events["application/json"]["schema"] == {"$ref": "#/components/schemas/Events"}
    manifest = openapi.paths()["/v1/jobs/{job}"]["get"]["responses"]["200"]["content"]["application/json"]
    assert manifest["schema"] == {"$ref": "#/components/schemas/Manifest"}
    schemas = openapi.document()["components"]["schemas"]
    kinds = {
        schemas[ref["$ref"].rsplit("/", 1)[1]]["properties"]["k"]["const"]
        for ref in schemas["Record"]["oneOf"]
    }
    assert kinds == set(Kind), "one schema per journal record kind"


def validator(name: str) -> jsonschema.Draft202012Validator:
    """Validates against the document's schema `name` (its $refs resolved within the document)."""
    root = {"$ref": f"#/components/schemas/{name}", "components": openapi.document()["components"]}
    return jsonschema.Draft202012Validator(root)


async def typed_job(relay: RelayServer, worker: ScriptedWorker) -> tuple[str, dict[int, bytes]]:
    """A finished job with every kind of record: progress, a PNG and an MP4 item, a failed item, a result."""
    async with relay.http() as http:
        r = await http.post(f"{relay.url}/v1/jobs", json={"input": {}})
        assert r.status_code == 201, r.text
        job: str = r.json()["id"]
    await worker.take()
    envs = wire.Envelopes(job)
    files = {0: make_files(1, 40_000)[0], 1: make_files(1, 30_000)[0]}
    mimes = {0: "image/png", 1: "video/mp4"}
    entries = []
    await worker.post(job, envs.progress(0, 1, 2))
    for item, data in files.items():
        for envelope in envs.parts(item, data, mime=mimes[item], id=f"f{item}", part_bytes=16 * 1024):
            await worker.post(job, envelope)
        parts = wire.part_count(len(data), 16 * 1024)
        entries.append(wire.ManifestItem(item, f"f{item}", "ok", mimes[item], len(data), sha(data), parts))
    await worker.post(job, envs.error(2, "oom", "out of memory", id="f2"))
    entries.append(wire.ManifestItem(2, "f2", "error"))
    for envelope in [*envs.result({"images": [{"$file": 0}, {"$file": 2}]}), *envs.manifest(entries)]:
        await worker.post(job, envelope)
    await worker.done(job)
    for _ in range(400):
        store = relay.relay.job(job)
        if store is not None and store.finished:
            return job, files
        await asyncio.sleep(0.05)
    raise AssertionError("the job did not finish")


async def test_what_the_relay_answers_is_what_the_document_says(
    relay_server: RelayServer, worker: ScriptedWorker
) -> None:
    """The manifest, the long-poll and SSE records validate against their schemas; media answers its
    declared statuses and types, HEAD included."""
    job, files = await typed_job(relay_server, worker)
    paths = openapi.paths()
    async with relay_server.http() as http:
        manifest = (await http.get(f"{relay_server.url}/v1/jobs/{job}")).json()
        validator("Manifest").validate(manifest)
        assert [e["code"] for e in manifest["errors"]] == ["oom"] and manifest["result"]["images"][1] is None
        polled = (
            await http.get(f"{relay_server.url}/v1/jobs/{job}/events", params={"format": "json"})
        ).json()
        validator("Events").validate(polled)
        assert {r["k"] for r in polled["events"]} == set(Kind), "every kind of record was checked"
        sse: list[dict[str, Any]] = []
        async with http.stream("GET", f"{relay_server.url}/v1/jobs/{job}/events") as stream:
            assert stream.headers["content-type"].split(";")[0] in paths["/v1/jobs/{job}/events"]["get"][
                "responses"]["200"]["content"]  # fmt: skip
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    sse.append(json.loads(line.removeprefix("data: ")))
                    if sse[-1]["k"] == "done":
                        break
        records = validator("Record")
        for record in sse:
            records.validate(record)
        assert sse == polled["events"]
        media = paths["/v1/jobs/{job}/media/{item}"]
        for item, data in files.items():
            url = f"{relay_server.url}/v1/jobs/{job}/media/{item}"
            whole = await http.get(url)
            assert whole.content == data and whole.headers["content-type"] == manifest["items"][item]["mime"]
            assert whole.headers["content-type"] in media["get"]["responses"]["200"]["content"]
            etag = whole.headers["etag"]
            answers = {
                ("get", 206): await http.get(url, headers={"range": "bytes=0-9"}),
                ("get", 304): await http.get(url, headers={"if-none-match": etag}),
                ("get", 416): await http.get(url, headers={"range": f"bytes={len(data)}-"}),
                ("head", 200): await http.head(url),
                ("head", 206): await http.head(url, headers={"range": "bytes=0-9"}),
                ("head", 304): await http.head(url, headers={"if-none-match": etag}),
                ("head", 416): await http.head(url, headers={"range": f"bytes={len(data)}-"}),
            }
            for (method, status), response in answers.items():
                assert response.status_code == status, (method, status, response.text)
                assert str(status) in media[method]["responses"]
                if method == "head":
                    assert response.content == b""
            assert answers["head", 200].headers["content-length"] == str(len(data))
            assert answers["head", 200].headers["content-type"] == whole.headers["content-type"]
