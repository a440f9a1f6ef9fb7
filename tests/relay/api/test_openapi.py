"""relay.api.openapi: `/openapi.json` is served, is a valid OpenAPI document, and describes exactly the app's routes."""

from __future__ import annotations

from pathlib import Path

import httpx
import schemathesis
from schemathesis.core.result import Ok
from starlette.routing import Route

from relay.api import openapi
from relay.api.app import create_app
from relay.config import RelaySettings
from tests.relay.conftest import RelayServer

#: Routes that are not part of the HTTP API: the demo page (static files are a Mount, the websocket a
#: WebSocketRoute, neither a Route).
NOT_API = {"/"}


def routes_of_the_app(tmp_path: Path) -> set[tuple[str, str]]:
    app = create_app(RelaySettings(data_dir=tmp_path, insecure=True))
    found = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path not in NOT_API:
            for method in route.methods or ():
                if method != "HEAD":  # Starlette adds HEAD to every GET
                    found.add((route.path, method.lower()))
    return found


def test_the_document_describes_exactly_the_routes(tmp_path: Path) -> None:
    documented = {(path, method) for path, ops in openapi.paths().items() for method in ops}
    actual = routes_of_the_app(tmp_path)
    assert actual - documented == set(), "routes missing from relay/api/openapi.py"
    assert documented - actual == set(), "relay/api/openapi.py describes routes the app does not have"
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
