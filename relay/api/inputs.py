"""Job inputs staged in the relay, so a batch's images travel to the worker by reference, never inside the
`/run` body (RunPod caps it at 10 MB):

    PUT  /v1/inputs                      the image as the body             -> 201 new / 200 already held
    POST /v1/inputs/lookup               {"sha256": [up to 1000]}           -> 200 {held: {sha256: ...}, missing}
    GET  /v1/inputs/{sha256}             this key's input, if held          -> 200 / 404 (HEAD: no body)
    POST /v1/inputs/tokens               {"ttl_s"?}: an input token         -> 201 {token, expires_at}
    GET  /v1/inputs/{owner}/{sha256}     ?exp=&sig=: the bytes (what the worker fetches)

A client asks `POST /v1/inputs/lookup` which of a batch's files this key holds already (one request per
1,000 files instead of one per file), then PUTs the missing ones. The first four take the credential of a submit (an API key with `jobs:write`) or an input token, a
short-lived token a backend mints with its key for a browser, good for these routes only. Every answer
describing an input is `{"ref", "sha256", "bytes", "mime", "url", "expires_at"}`: `ref` (`input:<sha256>`)
goes into a job's `items[].image`, and `url` is what the worker will fetch (a signed URL of this relay, or in
cluster mode a presigned bucket URL), valid until `expires_at`.

A body is streamed to a spool file while it is hashed, never held whole in memory, and refused as soon as
it passes `max_input_bytes` (413) or its first bytes are not those of a PNG, JPEG, WebP, GIF or BMP file
(415). `X-Podstream-Sha256`, when sent, must match the body (422); when this key already holds those bytes
the answer is 200 without writing the body (nor counting it against the quota). Each key's inputs count
against its `input_quota_bytes` (507). Errors are `{"error": {"code", "message"}}` and leave nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, Protocol, TypeVar

from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from podstream.images import HEAD_BYTES, IMAGE_TYPES, sniff
from relay.api.auth import INPUTS_SCOPE, Authorizer, Denied, Principal
from relay.api.uploads import SHA256_HEADER
from relay.config import RelaySettings
from relay.metrics import RelayMetrics
from relay.storage.input_store import (
    HEX64,
    OWNER,
    DiskInputs,
    InputQuota,
    InputQuotaExceeded,
    InputStore,
    StagedInput,
    owner_of,
)

#: Bytes gathered from the request before one write (in a worker thread).
_WRITE_BYTES: Final = 1 << 20
_TOKEN_BODY: Final = 4096
#: The most sha256 one `POST /v1/inputs/lookup` may ask about, and the longest body it takes.
LOOKUP_MAX: Final = 1000
_LOOKUP_BODY: Final = 128 * 1024
_T = TypeVar("_T")
_EXP: Final = re.compile(r"[?&]exp=([0-9]+)")
#: `_base` of recent requests, by what it depends on (bounded: the Host header is the client's).
_BASES: dict[tuple[object, ...], str] = {}


class InputHost(Protocol):
    """What these routes need of the relay (`relay.service.Relay`, the app's `state.relay`)."""

    @property
    def settings(self) -> RelaySettings: ...

    @property
    def metrics(self) -> RelayMetrics: ...

    @property
    def auth(self) -> Authorizer: ...

    @property
    def inputs(self) -> InputStore: ...

    @property
    def input_quota(self) -> InputQuota: ...


class InputRefused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def describe(host: InputHost, staged: StagedInput, base: str) -> dict[str, Any]:
    """The answer about a staged input: its ref and a URL the worker can fetch, valid `input_url_ttl_s`."""
    ttl = host.settings.input_url_ttl_s
    url = host.inputs.presign(staged, ttl)
    if url is None:
        signed = host.auth.sign(staged.path, ttl)
        url = base + signed
        exp = _EXP.search(signed)
        expires = float(exp[1]) if exp else time.time() + ttl  # unsigned: an --insecure relay
    else:
        expires = time.time() + min(ttl, 7 * 24 * 3600)
    return {
        "ref": staged.ref, "sha256": staged.sha256, "bytes": staged.size, "mime": staged.mime,
        "url": url, "expires_at": expires,
    }  # fmt: skip


def check_image(head: bytes) -> str:
    """The MIME type of an input from its first bytes; `InputRefused` 415 when it is no image we take."""
    mime = sniff(head)
    if mime is None:
        kinds = ", ".join(sorted(t.removeprefix("image/").upper() for t in IMAGE_TYPES))
        raise InputRefused(415, "unsupported_media_type", f"a job input must be an image ({kinds})")
    return mime


def stage_bytes(host: InputHost, owner: str, data: bytes) -> StagedInput:
    """Stage an input already in memory (an inline image of a submit). Blocking: run it in a thread."""
    limit = host.settings.max_input_bytes
    if len(data) > limit:
        raise InputRefused(413, "too_large", f"an input is {len(data)} bytes, over the limit of {limit}")
    mime = check_image(data[:HEAD_BYTES])
    sha256 = hashlib.sha256(data).hexdigest()
    held = host.inputs.stat(owner, sha256, touch=True)
    if held is not None:
        return held
    _reserve(host, owner, len(data))
    temp = host.inputs.spool()
    try:
        temp.write(data)
        staged = host.inputs.keep(temp, owner, sha256, mime)
    except BaseException:
        temp.discard()
        host.input_quota.release(owner, len(data))
        raise
    host.metrics.bytes_in.labels("input").inc(len(data))
    return staged


async def receive(
    host: InputHost,
    owner: str,
    chunks: AsyncIterator[bytes],
    *,
    expected: str | None,
    declared: int | None,
    look_first: bool = False,
) -> tuple[StagedInput, bool]:
    """Stream a body into the owner's inputs: (the input, True when newly stored).

    The event loop only gathers the body's chunks (no copy of them) and checks its length and first bytes; the
    blocking work runs in worker threads, as few hops as it takes: one write per `_WRITE_BYTES` gathered (the
    first creates the spool file), the last one also verifying the bytes, looking for them among the owner's
    inputs and keeping them (fsynced, with their directory, before the answer). A body up to `_WRITE_BYTES`
    costs one hop. `look_first` (the body is one write and `expected` names it): that hop first looks for
    `expected` among the owner's inputs, and when held writes nothing (and reserves nothing)."""
    upload = _Upload(host, owner, host.metrics.bytes_in.labels("input").inc)
    try:
        if (
            declared
        ):  # reserved before the first byte is written (in a thread only if the store must be measured)
            try:
                if not _try_reserve(host, owner, declared):
                    await _hop(upload.reserve, declared)
                upload.reserved = declared
            except InputRefused:
                if not look_first:
                    raise
                upload.unreserved = declared  # held bytes take no more quota: the hop looks, then reserves
        limit = host.settings.max_input_bytes
        pending: list[bytes] = []
        buffered = received = 0
        head = b""
        mime: str | None = None
        async for chunk in chunks:
            if not chunk:
                continue
            received += len(chunk)
            if received > limit:
                raise InputRefused(413, "too_large", f"job inputs are limited to {limit} bytes")
            if mime is None:
                head += chunk[: HEAD_BYTES - len(head)]
                if len(head) >= HEAD_BYTES:
                    mime = check_image(head)
            pending.append(chunk)
            buffered += len(chunk)
            if buffered >= _WRITE_BYTES:
                await _hop(upload.write, pending)
                pending, buffered = [], 0
        if not received:
            raise InputRefused(400, "empty", "the body is empty: send the image as the request body")
        if mime is None:
            mime = check_image(head)
        if declared is not None and received != declared:
            raise InputRefused(400, "bad_length", f"the body was {received} bytes, not {declared}")
        return await _hop(upload.finish, pending, expected, mime, look_first)
    finally:
        if not upload.settled:
            if upload.temp.opened:
                await _hop(upload.discard)
            else:  # no file was made: only the reservation to give back (a lock, no I/O)
                upload.discard()


class _Upload:
    """One body on its way into the owner's inputs: its spool file and quota reservation. Its blocking
    methods run in worker threads, one at a time (`_hop`), never beside the event loop's use of it."""

    def __init__(self, host: InputHost, owner: str, counted: Callable[[int], None]) -> None:
        self.host = host
        self.owner = owner
        self.temp = host.inputs.spool()  # no file yet: the first write makes it
        self.counted = counted
        self.reserved = 0
        #: Bytes to reserve before writing (`receive` could not: the owner's quota was full).
        self.unreserved = 0
        #: Kept, or discarded: nothing is left to clean up.
        self.settled = False

    def reserve(self, nbytes: int) -> None:
        _reserve(self.host, self.owner, nbytes)

    def write(self, chunks: list[bytes]) -> None:
        if self.unreserved:  # before the first byte is written
            _reserve(self.host, self.owner, self.unreserved)
            self.reserved, self.unreserved = self.unreserved, 0
        self.temp.writev(chunks)
        self.counted(sum(map(len, chunks)))

    def finish(
        self, chunks: list[bytes], expected: str | None, mime: str, look_first: bool
    ) -> tuple[StagedInput, bool]:
        """Write the last chunks, verify the body, then keep it unless the owner holds those bytes already
        (`look_first`: looked for as `expected` before anything is written)."""
        temp, inputs = self.temp, self.host.inputs
        looked = look_first and expected is not None and not temp.opened
        if looked and expected is not None:
            held = inputs.stat(self.owner, expected, touch=True)
            if held is not None:  # staged before: nothing is written
                self.discard()
                return held, False
        self.write(chunks)
        sha256 = temp.hash.hexdigest()
        if expected is not None and sha256 != expected:
            raise InputRefused(422, "sha256_mismatch", f"the body does not match {SHA256_HEADER}")
        held = None if looked else inputs.stat(self.owner, sha256, touch=True)
        if held is not None:  # the same bytes, staged before: nothing more is stored
            self.discard()
            return held, False
        if not self.reserved:
            _reserve(self.host, self.owner, temp.size)
            self.reserved = temp.size
        staged = inputs.keep(temp, self.owner, sha256, mime)
        self.settled = True
        return staged, True

    def discard(self) -> None:
        self.temp.discard()
        if self.reserved:
            self.host.input_quota.release(self.owner, self.reserved)
            self.reserved = 0
        self.settled = True


async def _hop(function: Callable[..., _T], *args: Any) -> _T:
    """`function(*args)` in a worker thread. Cancelled, it still waits for the thread to finish before
    raising: what cleans up after it (`_Upload.discard`) never runs beside it."""
    running = asyncio.get_running_loop().run_in_executor(None, function, *args)
    try:
        return await asyncio.shield(running)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await running
        raise


async def _drain(request: Request, limit: int) -> None:
    received = 0
    with contextlib.suppress(ClientDisconnect):
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                return  # a body this long is not the input it claims to be; the connection is closed


def _reserve(host: InputHost, owner: str, nbytes: int) -> None:
    try:
        host.input_quota.reserve(owner, nbytes)
    except InputQuotaExceeded as exc:
        raise InputRefused(507, "quota_exceeded", str(exc)) from None


def _try_reserve(host: InputHost, owner: str, nbytes: int) -> bool:
    """`_reserve` on the event loop when that cannot block (False: not reserved, the store must be measured)."""
    try:
        return host.input_quota.try_reserve(owner, nbytes)
    except InputQuotaExceeded as exc:
        raise InputRefused(507, "quota_exceeded", str(exc)) from None


# ---------------------------------------------------------------------------------------------- routes


def _host(request: Request) -> InputHost:
    host: InputHost = request.app.state.relay
    return host


def _base(request: Request) -> str:
    """The relay's URL as the client reached it (or its `public_url`), for the URLs in answers."""
    public = _host(request).settings.public_url
    if public:
        return public.rstrip("/")
    scope = request.scope
    key = (
        scope.get("scheme"), scope.get("server"), scope.get("root_path"), scope.get("app_root_path"),
        request.headers.get("host"),
    )  # fmt: skip
    base = _BASES.get(key)
    if base is None:
        if len(_BASES) >= 64:
            _BASES.clear()
        base = _BASES[key] = str(request.base_url).rstrip("/")
    return base


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


async def _principal(request: Request) -> Principal:
    host = _host(request)
    try:
        return await host.auth.http(request.headers, "input", None)
    except Denied as exc:
        host.metrics.denied.labels(exc.code).inc()
        raise


def _sha256_param(request: Request) -> str | None:
    value = str(request.path_params["sha256"]).lower()
    return value if HEX64.match(value) else None


async def stage(request: Request) -> Response:
    """`PUT /v1/inputs`: the body becomes one of this key's inputs."""
    owner = owner_of((await _principal(request)).name)
    host = _host(request)
    expected: str | None = None
    raw_sha = request.headers.get(SHA256_HEADER)
    if raw_sha is not None:
        expected = raw_sha.strip().lower()
        if not HEX64.match(expected):
            return _error(400, "bad_sha256", "X-Podstream-Sha256 must be the body's sha256 as 64 hex digits")
    declared: int | None = None
    raw_length = request.headers.get("content-length")
    if raw_length is not None:
        if not (raw_length.strip().isascii() and raw_length.strip().isdigit()):
            return _error(400, "bad_length", "Content-Length must be a number")
        declared = int(raw_length)
        limit = host.settings.max_input_bytes
        if declared > limit:
            return _error(413, "too_large", f"job inputs are limited to {limit} bytes")
    # Held bytes are not written. A body of one write is gathered anyway: its hop looks first (`receive`).
    look_first = expected is not None and declared is not None and declared < _WRITE_BYTES
    if expected is not None and not look_first:
        held = await asyncio.to_thread(host.inputs.stat, owner, expected, touch=True)
        if held is not None:  # staged before: nothing is written (the body is read to its end, then dropped,
            # so that the client, still sending, never meets a closed connection)
            await _drain(request, host.settings.max_input_bytes)
            return JSONResponse(describe(host, held, _base(request)), status_code=200)
    try:
        staged, new = await receive(
            host, owner, request.stream(), expected=expected, declared=declared, look_first=look_first
        )
    except InputRefused as exc:
        return _error(exc.status, exc.code, str(exc))
    except ClientDisconnect:
        return _error(400, "disconnected", "the upload ended before its body did")
    return JSONResponse(describe(host, staged, _base(request)), status_code=201 if new else 200)


async def lookup(request: Request) -> Response:
    """`GET|HEAD /v1/inputs/{sha256}`: whether this key holds those bytes (and restarts their expiry)."""
    owner = owner_of((await _principal(request)).name)
    host = _host(request)
    sha256 = _sha256_param(request)
    if sha256 is None:
        return _error(400, "bad_sha256", "an input is named by its sha256: 64 hex digits")
    held = await asyncio.to_thread(host.inputs.stat, owner, sha256, touch=True)
    if held is None:
        return _error(404, "not_found", f"this key holds no input {sha256}")
    return JSONResponse(describe(host, held, _base(request)))


async def find(request: Request) -> Response:
    """`POST /v1/inputs/lookup {"sha256": [...]}`: which of these this key holds, each described as `GET
    /v1/inputs/{sha256}` would (and its expiry restarted), and which it does not."""
    owner = owner_of((await _principal(request)).name)
    host = _host(request)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > _LOOKUP_BODY:
            return _error(413, "too_large", f"a lookup asks about at most {LOOKUP_MAX} sha256")
    try:
        data = json.loads(body, parse_constant=_not_json)
    except (ValueError, RecursionError):
        return _error(400, "bad_json", "the body is not JSON")
    asked = data.get("sha256") if isinstance(data, dict) else None
    if not isinstance(asked, list):
        return _error(400, "bad_json", 'the body must be {"sha256": [64 hex digits, ...]}')
    if len(asked) > LOOKUP_MAX:
        return _error(413, "too_large", f"a lookup asks about at most {LOOKUP_MAX} sha256, not {len(asked)}")
    wanted: dict[str, None] = {}  # in the order asked, each once
    for index, value in enumerate(asked):
        sha256 = value.strip().lower() if isinstance(value, str) else ""
        if not HEX64.match(sha256):
            return _error(400, "bad_sha256", f"sha256[{index}] is not a sha256 (64 hex digits)")
        wanted[sha256] = None
    held = await asyncio.to_thread(host.inputs.stat_many, owner, list(wanted), touch=True)
    base = _base(request)
    return JSONResponse({
        "held": {sha256: describe(host, staged, base) for sha256, staged in held.items()},
        "missing": [sha256 for sha256 in wanted if sha256 not in held],
    })  # fmt: skip


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def mint(request: Request) -> Response:
    """`POST /v1/inputs/tokens {"ttl_s"?}`: a token a browser may stage inputs with, and nothing else."""
    host = _host(request)
    principal = await _principal(request)
    if principal.kind == "token":
        raise Denied("input tokens are minted with an API key", code="forbidden")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > _TOKEN_BODY:
            return _error(413, "too_large", f"this body is limited to {_TOKEN_BODY} bytes")
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return _error(400, "bad_json", "the body is not JSON")
    ttl = data.get("ttl_s") if isinstance(data, dict) else None
    if not isinstance(data, dict) or (
        ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0)
    ):
        return _error(400, "bad_ttl", "'ttl_s' must be a positive number of seconds")
    token = host.auth.mint(principal, [], None if ttl is None else float(ttl), scope=INPUTS_SCOPE)
    if token is None:
        return _error(404, "no_auth", "this relay runs without auth (--insecure): stage inputs without one")
    return JSONResponse({"token": token.token, "expires_at": token.expires}, status_code=201)


async def fetch(request: Request) -> Response:
    """`GET /v1/inputs/{owner}/{sha256}?exp=&sig=`: the bytes, for whoever holds the signed URL."""
    host = _host(request)
    owner, sha256 = str(request.path_params["owner"]), _sha256_param(request)
    if sha256 is None or not OWNER.match(owner):
        return _error(404, "not_found", "no such input")
    path = f"/v1/inputs/{owner}/{sha256}"
    try:
        signed = host.auth.check_signature(
            path, request.query_params.get("exp"), request.query_params.get("sig")
        )
    except Denied as exc:
        host.metrics.denied.labels(exc.code).inc()
        raise
    if not signed:
        raise Denied("an input URL needs its signature (exp, sig): get one from PUT /v1/inputs", status=401)
    held = await asyncio.to_thread(host.inputs.stat, owner, sha256)
    if held is None:
        return _error(404, "not_found", "no such input (it may have expired)")
    inputs = host.inputs
    url = inputs.presign(held, host.settings.media_url_ttl_s, request.method)
    if url is not None:  # cluster mode: the bucket serves the bytes
        return RedirectResponse(url, status_code=302)
    assert isinstance(inputs, DiskInputs)  # the one store without a bucket
    headers = {"etag": f'"{sha256}"', "cache-control": "private, max-age=3600, immutable"}
    return FileResponse(inputs.file(owner, sha256), media_type=held.mime, headers=headers)


def routes() -> list[Route]:
    return [
        Route("/v1/inputs", stage, methods=["PUT"]),
        Route("/v1/inputs/lookup", find, methods=["POST"]),
        Route("/v1/inputs/tokens", mint, methods=["POST"]),
        Route("/v1/inputs/{sha256}", lookup, methods=["GET", "HEAD"]),
        Route("/v1/inputs/{owner}/{sha256}", fetch, methods=["GET", "HEAD"]),
    ]
