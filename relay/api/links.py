"""Short links to one job: a code that stands for a read-only subscriber token, so a URL never carries a key.

    POST /v1/jobs/{id}/links   {"ttl_s"?, "uses"?}   an API key that may read the job (scope jobs:read)
                               -> 201 {"code", "job", "expires_at", "uses"}
    POST /v1/links/{code}      no credential: the code is one
                               -> 200 {"job", "token", "expires_at"}  a subscriber token for that job only

A page link is then `https://relay/#job=<id>&code=<code>` (about 80 characters): the demo page trades the code
for a token and keeps the token, not the code. A code is good for `uses` exchanges (default 1: a one-time
link) until `ttl_s` (default: the relay's token lifetime); the token it gives lives as long as the code had
left, at most the relay's `max_token_ttl_s`. Codes are 128 random bits, so they cannot be guessed; a wrong,
used-up or expired code is one answer, `404 link_not_found`, which says nothing of which it was.

A single relay keeps its codes in its memory (`LinkCodes`), at most `MAX_LINKS` at once (the oldest go
first): a restarted relay forgets them, and a token already handed out stays valid until it expires. Replicas
in cluster mode keep them in Redis (`relay.storage.cluster.link_codes.RedisLinkCodes`), so a code issued by one is
redeemed on any other, once per use across all of them. The relay holds its store as `Relay.links`.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from relay.api.auth import Denied, Principal
from relay.storage.errors import BadJobId, check_job_id

if TYPE_CHECKING:
    from relay.api.auth import Authorizer
    from relay.config import RelaySettings
    from relay.metrics import RelayMetrics
    from relay.storage.job import JobStore

#: Codes held at once; issuing one more forgets the oldest.
MAX_LINKS: Final = 10_000
MAX_USES: Final = 100
#: Random bytes of a code (128 bits: they cannot be guessed).
CODE_BYTES: Final = 16
_MAX_BODY: Final = 4096


class LinkHost(Protocol):
    """What the link routes need of the relay (`relay.service.Relay`, the app's `state.relay`). Named here,
    not imported: the service imports this module for its link store."""

    @property
    def settings(self) -> RelaySettings: ...

    @property
    def metrics(self) -> RelayMetrics: ...

    @property
    def auth(self) -> Authorizer: ...

    @property
    def links(self) -> LinkStore: ...

    def job(self, job: str) -> JobStore | None: ...


@dataclass
class Link:
    job: str
    issuer: str
    expires: float
    uses: int


class LinkStore(Protocol):
    """Where the codes live: `issue` one, `redeem` it (each redeem spends one use; None: unknown, used up or
    expired). `blocking`: its calls wait on I/O, so the routes make them in a thread."""

    @property
    def blocking(self) -> bool: ...

    clock: Callable[[], float]

    def issue(self, job: str, issuer: str, ttl_s: float, uses: int) -> tuple[str, Link]: ...

    def redeem(self, code: str) -> Link | None: ...


class LinkCodes:
    """The codes this relay handed out, in its memory: `issue` one, `redeem` it (each redeem spends one use)."""

    blocking: Final = False

    def __init__(self, limit: int = MAX_LINKS, clock: Callable[[], float] = time.time) -> None:
        self.limit = limit
        self.clock = clock
        self._links: OrderedDict[str, Link] = OrderedDict()

    def __len__(self) -> int:
        return len(self._links)

    def issue(self, job: str, issuer: str, ttl_s: float, uses: int) -> tuple[str, Link]:
        self._sweep()
        while len(self._links) >= self.limit:
            self._links.popitem(last=False)
        code = secrets.token_urlsafe(CODE_BYTES)
        link = Link(job=job, issuer=issuer, expires=self.clock() + ttl_s, uses=uses)
        self._links[code] = link
        return code, link

    def redeem(self, code: str) -> Link | None:
        """The link of `code` with one use spent, or None (unknown, used up or expired)."""
        link = self._links.get(code)
        if link is None:
            return None
        if link.expires <= self.clock():
            del self._links[code]
            return None
        link.uses -= 1
        if link.uses <= 0:
            del self._links[code]
        return link

    def _sweep(self) -> None:
        now = self.clock()
        for code in [c for c, link in self._links.items() if link.expires <= now]:
            del self._links[code]


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _body(request: Request) -> dict[str, Any] | JSONResponse:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _MAX_BODY:
            return _error(413, "too_large", f"request bodies are limited to {_MAX_BODY} bytes")
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, RecursionError):  # RecursionError: nesting too deep to decode
        return _error(400, "bad_json", "the body is not JSON")
    if not isinstance(data, dict):
        return _error(400, "bad_json", "the body must be a JSON object")
    return data


def _number(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


async def _call(store: LinkStore, method: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(method, *args) if store.blocking else method(*args)


def routes() -> list[Route]:
    """The two routes, on the relay's link store (`Relay.links`)."""

    async def issue(request: Request) -> Response:
        relay: LinkHost = request.app.state.relay
        try:
            job = check_job_id(request.path_params["job"])
        except BadJobId as exc:
            return _error(400, "bad_job_id", str(exc))
        try:
            principal = await relay.auth.http(request.headers, "token", job)
        except Denied as exc:
            relay.metrics.denied.labels(exc.code).inc()
            headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
            return JSONResponse(
                {"error": {"code": exc.code, "message": str(exc)}}, status_code=exc.status, headers=headers
            )
        if relay.job(job) is None:
            return _error(404, "not_found", f"this relay does not know job {job}")
        body = await _body(request)
        if isinstance(body, JSONResponse):
            return body
        limit = relay.settings.max_token_ttl_s
        ttl = body.get("ttl_s", relay.settings.token_ttl_s)
        if not _number(ttl) or not 0 < ttl <= limit:
            return _error(400, "bad_ttl", f"'ttl_s' must be a number of seconds in (0, {limit:g}]")
        uses = body.get("uses", 1)
        if isinstance(uses, bool) or not isinstance(uses, int) or not 1 <= uses <= MAX_USES:
            return _error(400, "bad_uses", f"'uses' must be an integer from 1 to {MAX_USES}")
        links = relay.links
        code, link = await _call(links, links.issue, job, principal.name, float(ttl), uses)
        answer = {"code": code, "job": job, "expires_at": int(link.expires), "uses": uses}
        return JSONResponse(answer, status_code=201)

    async def redeem(request: Request) -> Response:
        relay: LinkHost = request.app.state.relay
        links = relay.links
        link: Link | None = await _call(links, links.redeem, request.path_params["code"])
        if link is None:
            relay.metrics.denied.labels("link_not_found").inc()
            return _error(
                404, "link_not_found", "this link is unknown, used up or expired: ask for a new one"
            )
        left = link.expires - links.clock()
        token = relay.auth.mint(Principal(name=f"link:{link.issuer}", kind="key"), [link.job], left)
        if token is None:  # a relay without auth (--insecure): the job needs no token
            return JSONResponse({"job": link.job, "token": None, "expires_at": int(link.expires)})
        return JSONResponse({"job": link.job, "token": token.token, "expires_at": int(token.expires)})

    return [
        Route("/v1/jobs/{job}/links", issue, methods=["POST"]),
        Route("/v1/links/{code}", redeem, methods=["POST"]),
    ]
