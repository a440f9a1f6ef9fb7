"""The relay's authorization: API keys, job-scoped subscriber tokens, signed media URLs, Origin checks.

Every decision about who may do what goes through one `Authorizer`; the HTTP and websocket code only ask it.

- **API keys** (`KeyAuthorizer`) are configured as hashes, `[name=]sha256:<64 hex>[/scope+scope]`
  (`PODSTREAM_API_KEYS`, comma or whitespace separated): a presented key is hashed and compared with every
  configured hash in constant time (`hmac.compare_digest`). Scopes: `jobs:write` (submit, attach, cancel),
  `jobs:read` (list, read any job, mint subscriber tokens), `upload` (worker uploads), `metrics`
  (`GET /metrics`); a key without `/scopes` has them all. Sent as `Authorization: Bearer <key>`.
- **Subscriber tokens** are short-lived, job-scoped HS256 JWTs (PyJWT) (`aud`, `iat`, `exp`, `jobs`, `sub`) minted by
  `POST /v1/jobs` and `POST /v1/jobs/{id}/tokens`. The algorithm is pinned: a token whose header is not
  exactly HS256 is refused before its signature is even looked at. They are sent in the websocket's first
  frame (`auth`) or an `Authorization: Bearer` header, never in a URL.
- **Input tokens** are the same JWTs with `scope: "inputs"` and no jobs: a backend mints one with its API key
  (`POST /v1/inputs/tokens`) for a browser, which may then stage job inputs (`PUT /v1/inputs`) under that
  key's namespace and do nothing else.
- **Media URLs** handed out in manifests and events carry `?exp=<unix s>&sig=<HMAC-SHA256>` over the path and
  the expiry, so an `<img src>` works without a header and a URL stops working after `exp`.
- **Origins**: a browser websocket's `Origin` must be the relay's own origin or in the allow-list. The
  relay's own origin is the scheme and Host the request came with (`OwnOrigin`): behind a TLS proxy, the
  scheme is `https` only where uvicorn trusts the proxy's `X-Forwarded-Proto` (`FORWARDED_ALLOW_IPS`).

`AllowAll` is the insecure mode (`podstream relay --insecure`): everyone may do everything, except a browser
on another site: with no credential to check, a write (submit, attach, cancel, upload) or a websocket whose
`Origin` is neither the relay's own nor allow-listed is refused (`origin_not_allowed`, 4504), so a page on
some other site cannot spend the developer's RunPod key (CSRF; a text/plain POST needs no CORS preflight).

Calls of the `Authorizer` protocol:
- `connect(origin, headers)`: a websocket is being opened. Returns a `Principal` (`needs_token`: the client
  must send an `auth` frame first), or raises `Denied` (4504 for a bad Origin, 4501 for a bad credential).
- `token(principal, token)`: an `auth` frame arrived; the authenticated principal, or `Denied`
  (4501 invalid, 4003 expired).
- `http(headers, action, job)`: an HTTP request, `action` one of `ACTIONS`; `Denied` (401/403) refuses it.
- `scope(headers, scope)`: the API key of the request, which must have `scope` (`require_scope` in a route).
- `may_read(principal, job)`: may this principal subscribe to / read this job.
- `mint(principal, jobs, ttl_s, scope)`: a subscriber token for `jobs` (or, with `scope="inputs"`, an input
  token), or None when the relay needs none.
- `sign(path, ttl_s, expires=)` / `check_signature(path, exp, sig)`: signed media (and staged input) URLs
  (`expires`: this expiry, so that many URLs share one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import jwt
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from podstream.frames import CloseCode

ACTIONS: Final = frozenset(
    {"submit", "attach", "read", "list", "cancel", "token", "upload", "metrics", "input"}
)
#: Actions that change something (or spend money): what a cross-site page must not do without a credential.
WRITES: Final = frozenset({"submit", "attach", "cancel", "token", "upload", "input"})
SCOPES: Final = frozenset({"jobs:write", "jobs:read", "upload", "metrics"})
#: The scope an action needs from an API key (`read` is also allowed to a token covering the job).
ACTION_SCOPES: Final = {
    "submit": "jobs:write", "attach": "jobs:write", "cancel": "jobs:write", "list": "jobs:read",
    "read": "jobs:read", "token": "jobs:read", "upload": "upload", "metrics": "metrics", "input": "jobs:write",
}  # fmt: skip
#: The scope of an input token (`POST /v1/inputs/tokens`): it may stage job inputs (`input`), nothing else.
INPUTS_SCOPE: Final = "inputs"
KEY_PREFIX: Final = "psk_"
TOKEN_ALGORITHM: Final = "HS256"
_MAX_TOKEN_CHARS: Final = 8192
_MAX_KEY_CHARS: Final = 512
_KEY_ENTRY: Final = re.compile(
    r"^(?:(?P<name>[A-Za-z0-9_.-]{1,64})=)?sha256:(?P<hash>[0-9a-fA-F]{64})(?:/(?P<scopes>[a-z:+]+))?$"
)


class Denied(Exception):
    """Refused. `status` is the HTTP status (401 or 403); `close_code` the websocket close code;
    `code` the machine-readable error code of the JSON error body."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 403,
        close_code: int = CloseCode.UNAUTHORIZED,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.close_code = close_code
        self.code = code or ("unauthorized" if status == 401 else "forbidden")


class AuthConfigError(ValueError):
    """An API key entry or secret the relay cannot use (one line)."""


@dataclass(frozen=True)
class Principal:
    name: str = "anonymous"
    needs_token: bool = False
    #: Jobs this principal may read; None = any.
    jobs: frozenset[str] | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)
    #: "key", "token" or "anonymous".
    kind: str = "anonymous"
    #: Unix time the credential stops being valid (tokens); None = does not expire.
    expires: float | None = None


@dataclass(frozen=True)
class ApiKey:
    name: str
    digest: bytes  # sha256 of the key
    scopes: frozenset[str]


@dataclass(frozen=True)
class Token:
    token: str
    expires: float


class Authorizer(Protocol):
    async def connect(self, origin: str | None, headers: Mapping[str, str]) -> Principal: ...

    async def token(self, principal: Principal, token: str) -> Principal: ...

    async def http(self, headers: Mapping[str, str], action: str, job: str | None) -> Principal: ...

    async def scope(self, headers: Mapping[str, str], scope: str) -> Principal: ...

    async def may_read(self, principal: Principal, job: str) -> bool: ...

    def mint(
        self, principal: Principal, jobs: Iterable[str], ttl_s: float | None = None, scope: str | None = None
    ) -> Token | None: ...

    def sign(self, path: str, ttl_s: float | None = None, *, expires: int | None = None) -> str: ...

    def check_signature(self, path: str, exp: str | None, sig: str | None) -> bool: ...


async def require_scope(request: HTTPConnection, scope: str) -> Principal:
    """The API key principal of `request`, which must have `scope` (e.g. "upload"); raises `Denied`
    (401 no or unknown key, 403 a key without the scope). The app turns `Denied` into a JSON error."""
    authorizer: Authorizer = request.app.state.relay.auth
    return await authorizer.scope(request.headers, scope)


# ---------------------------------------------------------------------------------------------- keys


def generate_key() -> str:
    """A new random API key (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """The form the relay is configured with: `sha256:<hex>`."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def parse_keys(text: str) -> list[ApiKey]:
    """API keys from `[name=]sha256:<hex>[/scope+scope]` entries (comma, whitespace or newline separated;
    `#` starts a comment line)."""
    keys: list[ApiKey] = []
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    for entry in re.split(r"[\s,]+", "\n".join(lines)):
        if not entry:
            continue
        match = _KEY_ENTRY.match(entry)
        if match is None:
            shown = entry if entry.startswith("sha256:") else entry[:8] + "..."
            raise AuthConfigError(
                f"API key entries look like [name=]sha256:<64 hex>[/jobs:read+jobs:write]; got {shown!r} "
                "(configure the key's hash, not the key: podstream relay --generate-key)"
            )
        scopes = frozenset(match["scopes"].split("+")) if match["scopes"] else SCOPES
        unknown = scopes - SCOPES
        if unknown:
            raise AuthConfigError(f"unknown scope(s) {sorted(unknown)}; known: {sorted(SCOPES)}")
        digest = bytes.fromhex(match["hash"])
        keys.append(ApiKey(match["name"] or f"key-{match['hash'][:8].lower()}", digest, scopes))
    return keys


def bearer(headers: Mapping[str, str]) -> str | None:
    """The credential of an `Authorization: Bearer ...` header, or None."""
    value = headers.get("authorization")
    if value is None:
        return None
    scheme, _, credential = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise Denied("the Authorization header must be 'Bearer <key or token>'", status=401)
    return credential.strip()


# -------------------------------------------------------------------------------------------- tokens


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def encode_token(claims: Mapping[str, Any], secret: bytes) -> str:
    token: str = jwt.encode(dict(claims), secret, algorithm=TOKEN_ALGORITHM)
    return token


def decode_token(token: str, secret: bytes, *, audience: str, now: float | None = None) -> dict[str, Any]:
    """The verified claims of a subscriber token; raises `Denied` (4501 invalid, 4003 expired).

    PyJWT checks the signature, with the algorithm pinned to HS256 (no "none", no RS/HS confusion), and the
    audience; the expiry is checked here against `now` (the authorizer's clock, injectable in tests)."""
    invalid = Denied("invalid token", status=401, code="invalid_token")
    if len(token) > _MAX_TOKEN_CHARS or token.count(".") != 2:
        raise invalid
    try:
        claims = jwt.decode(
            token, secret, algorithms=[TOKEN_ALGORITHM], audience=audience,
            options={"require": ["aud", "exp"], "verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )  # fmt: skip
    except jwt.InvalidAudienceError:
        raise Denied(
            "the token is not for this relay (audience)", status=401, code="wrong_audience"
        ) from None
    except jwt.InvalidTokenError:
        raise invalid from None
    exp, jobs = claims.get("exp"), claims.get("jobs")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise invalid
    if not isinstance(jobs, list) or not all(isinstance(j, str) for j in jobs):
        raise invalid
    if exp <= (time.time() if now is None else now):
        raise Denied(
            "the token expired", status=401, close_code=CloseCode.TOKEN_EXPIRED, code="token_expired"
        )
    return dict(claims)


# -------------------------------------------------------------------------------------------- origins


#: The request header `OwnOrigin` sets to the relay's own origin as this request reached it (a client's own
#: header of that name is dropped first).
OWN_ORIGIN: Final = "x-podstream-own-origin"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def origin_allowed(origin: str | None, own: str | None, allowed: frozenset[str]) -> bool:
    """A websocket's Origin is fine when absent (not a browser), the relay's own origin `own` (scheme, host
    and port: a page on http:// is not the relay's own when the relay was reached over https://), or allowed."""
    if origin is None or "*" in allowed:
        return True
    normalized = origin.strip().rstrip("/").lower()
    if normalized in allowed:
        return True
    return own is not None and _same_origin(normalized, own)


def _same_origin(a: str, b: str) -> bool:
    def key(origin: str) -> tuple[str, str, int | None] | None:
        try:
            parts = urlsplit(origin)
            port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
        except ValueError:
            return None
        return (parts.scheme, parts.hostname or "", port) if parts.hostname else None

    first = key(a)
    return first is not None and first == key(b)


class OwnOrigin:
    """ASGI middleware: tells the authorizers the relay's own origin for each request (its scheme, http or
    https for ws or wss, and its Host), in the `OWN_ORIGIN` header, so that the Origin check compares the
    scheme too. The scheme is uvicorn's: `https` behind a TLS proxy whose `X-Forwarded-Proto` it trusts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            own = OWN_ORIGIN.encode("ascii")
            headers = [(k, v) for k, v in scope["headers"] if k != own]
            host = next((v for k, v in headers if k == b"host"), None)
            if host:
                scheme = {"ws": "http", "wss": "https"}.get(scope["scheme"], scope["scheme"])
                headers.append((own, f"{scheme}://".encode("ascii") + host.strip().lower()))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


def parse_origins(text: str) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/").lower() for o in re.split(r"[\s,]+", text) if o.strip())


# ------------------------------------------------------------------------------------- authorizers


class KeyAuthorizer:
    """API keys, subscriber tokens and signed media URLs (the relay's default)."""

    def __init__(
        self,
        keys: list[ApiKey],
        secret: bytes,
        *,
        audience: str = "podstream",
        token_ttl_s: float = 3600.0,
        max_token_ttl_s: float = 86400.0,
        media_url_ttl_s: float = 3600.0,
        origins: frozenset[str] = frozenset(),
        clock: Any = time.time,
    ) -> None:
        if len(secret) < 32:
            raise AuthConfigError("the token secret must be at least 32 bytes")
        if not keys:
            raise AuthConfigError("no API keys configured")
        self.keys = keys
        self._secret = secret
        self._media_secret = hmac.new(secret, b"podstream media urls", hashlib.sha256).digest()
        self.audience = audience
        self.token_ttl_s = token_ttl_s
        self.max_token_ttl_s = max_token_ttl_s
        self.media_url_ttl_s = media_url_ttl_s
        self.origins = origins
        self.clock = clock

    # ------------------------------------------------------------------ credentials

    def _key(self, credential: str) -> ApiKey | None:
        if len(credential) > _MAX_KEY_CHARS:
            return None
        digest = hashlib.sha256(credential.encode("utf-8", "replace")).digest()
        found = None
        for key in self.keys:  # every key compared, in constant time each: no early exit
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found

    def _credential(self, credential: str) -> Principal:
        key = self._key(credential)
        if key is not None:
            return Principal(name=key.name, scopes=key.scopes, kind="key")
        if credential.count(".") == 2:
            return self._token_principal(credential)
        # Where a token is also taken, a credential that is neither cannot be told apart: name both.
        raise Denied("not an API key or a token of this relay", status=401, code="unauthorized")

    def _token_principal(self, token: str) -> Principal:
        claims = decode_token(token, self._secret, audience=self.audience, now=self.clock())
        # An input token reads no job: its `jobs` are ignored, whatever they say.
        inputs = claims.get("scope") == INPUTS_SCOPE
        return Principal(
            name=str(claims.get("sub", "token")), jobs=frozenset() if inputs else frozenset(claims["jobs"]),
            scopes=frozenset({INPUTS_SCOPE if inputs else "jobs:read"}), kind="token",
            expires=float(claims["exp"]),
        )  # fmt: skip

    # ------------------------------------------------------------------ the protocol

    async def connect(self, origin: str | None, headers: Mapping[str, str]) -> Principal:
        if not origin_allowed(origin, headers.get(OWN_ORIGIN), self.origins):
            raise Denied(f"origin {origin!r} is not allowed", close_code=CloseCode.ORIGIN_NOT_ALLOWED)
        credential = bearer(headers)
        if credential is None:
            return Principal(needs_token=True)
        principal = self._credential(credential)
        if principal.kind == "key" and "jobs:read" not in principal.scopes:
            raise Denied("this API key may not read jobs (scope jobs:read)")
        return principal

    async def token(self, principal: Principal, token: str) -> Principal:
        if principal.kind == "key":
            return principal  # already authenticated by its key for every job
        try:
            return self._credential(token)
        except Denied as exc:
            if exc.close_code == CloseCode.TOKEN_EXPIRED:
                raise
            raise Denied(str(exc), status=401, code=exc.code) from None

    async def http(self, headers: Mapping[str, str], action: str, job: str | None) -> Principal:
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        credential = bearer(headers)
        if credential is None:
            raise Denied("this request needs 'Authorization: Bearer <key>'", status=401)
        principal = self._credential(credential)
        if principal.kind == "token":
            if action == "read" and job is not None and principal.jobs is not None and job in principal.jobs:
                return principal
            if action == "input" and INPUTS_SCOPE in principal.scopes:
                return principal
            raise Denied("this token does not allow that" if action == "read" else "this needs an API key")
        needed = ACTION_SCOPES[action]
        if needed not in principal.scopes:
            raise Denied(f"this API key lacks the scope {needed}")
        return principal

    async def scope(self, headers: Mapping[str, str], scope: str) -> Principal:
        if scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}")
        credential = bearer(headers)
        if credential is None:
            raise Denied("this request needs 'Authorization: Bearer <key>'", status=401)
        key = self._key(credential)
        if key is None:
            raise Denied("unknown API key", status=401)
        if scope not in key.scopes:
            raise Denied(f"this API key lacks the scope {scope}")
        return Principal(name=key.name, scopes=key.scopes, kind="key")

    async def may_read(self, principal: Principal, job: str) -> bool:
        if principal.kind == "key":
            return "jobs:read" in principal.scopes
        if principal.kind == "token":
            return principal.jobs is not None and job in principal.jobs
        return False

    def mint(
        self, principal: Principal, jobs: Iterable[str], ttl_s: float | None = None, scope: str | None = None
    ) -> Token:
        ttl = self.token_ttl_s if ttl_s is None else min(ttl_s, self.max_token_ttl_s)
        now = self.clock()
        expires = int(now + ttl)
        claims: dict[str, Any] = {
            "aud": self.audience,
            "iat": int(now),
            "exp": expires,
            "jobs": sorted(set(jobs)),
        }
        claims["sub"] = principal.name
        if scope is not None:
            claims["scope"] = scope
        return Token(encode_token(claims, self._secret), float(expires))

    # ------------------------------------------------------------------ media urls

    def _signature(self, path: str, exp: int) -> str:
        message = f"{path}\n{exp}".encode()
        return _b64(hmac.new(self._media_secret, message, hashlib.sha256).digest())

    def sign(self, path: str, ttl_s: float | None = None, *, expires: int | None = None) -> str:
        # Expiries rounded up to the minute: the same URL for a minute, so browsers can cache the file.
        ttl = self.media_url_ttl_s if ttl_s is None else ttl_s
        exp = (int(self.clock() + ttl) // 60 + 1) * 60 if expires is None else expires
        return f"{path}?exp={exp}&sig={self._signature(path, exp)}"

    def check_signature(self, path: str, exp: str | None, sig: str | None) -> bool:
        """True for a valid unexpired signature; raises `Denied` for a forged or expired one; False when the
        URL carries none (the request may still have an Authorization header)."""
        if exp is None and sig is None:
            return False
        if exp is None or sig is None or not (exp.isascii() and exp.isdigit()) or len(exp) > 12:
            raise Denied("bad media URL signature", code="bad_signature")
        if not hmac.compare_digest(sig.encode(), self._signature(path, int(exp)).encode()):
            raise Denied("bad media URL signature", code="bad_signature")
        if int(exp) <= self.clock():
            raise Denied("this media URL expired: get a fresh one from the manifest", code="url_expired")
        return True


class AllowAll:
    """No authentication (`--insecure`): everyone may do everything, but browsers only from the relay's own
    origin or the allow-list (for websockets and writes); media URLs are not signed."""

    def __init__(self, origins: frozenset[str] | None = None) -> None:
        #: Origins allowed besides the relay's own (`*` = any); None = none.
        self.origins = origins or frozenset()

    def _check_origin(self, headers: Mapping[str, str]) -> None:
        origin = headers.get("origin")
        if not origin_allowed(origin, headers.get(OWN_ORIGIN), self.origins):
            raise Denied(
                f"origin {origin!r} is not allowed (an insecure relay takes writes and websockets from its own "
                "origin and PODSTREAM_ALLOWED_ORIGINS / PODSTREAM_CORS_ORIGINS only)",
                close_code=CloseCode.ORIGIN_NOT_ALLOWED, code="origin_not_allowed",
            )  # fmt: skip

    async def connect(self, origin: str | None, headers: Mapping[str, str]) -> Principal:
        self._check_origin({**headers, "origin": origin} if origin is not None else headers)
        return Principal()

    async def token(self, principal: Principal, token: str) -> Principal:
        return principal

    async def http(self, headers: Mapping[str, str], action: str, job: str | None) -> Principal:
        if action in WRITES:
            self._check_origin(headers)
        return Principal()

    async def scope(self, headers: Mapping[str, str], scope: str) -> Principal:
        if scope == "upload":
            self._check_origin(headers)
        return Principal()

    async def may_read(self, principal: Principal, job: str) -> bool:
        return True

    def mint(
        self, principal: Principal, jobs: Iterable[str], ttl_s: float | None = None, scope: str | None = None
    ) -> Token | None:
        return None

    def sign(self, path: str, ttl_s: float | None = None, *, expires: int | None = None) -> str:
        return path

    def check_signature(self, path: str, exp: str | None, sig: str | None) -> bool:
        return True
