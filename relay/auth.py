"""The relay's authorization seam.

Every decision about who may do what goes through one `Authorizer`, so API keys, job-scoped tokens,
signed media URLs and Origin checks can be added by implementing this protocol, without touching the
HTTP or websocket code. The relay ships `AllowAll` (open, the default) for now.

Calls:
- `connect(origin, headers)`: a websocket is being opened. Return a `Principal`, or raise `Denied`
  (closed with 4504 for a bad Origin, 4501 otherwise). `Principal.needs_token` means the client must send
  an `auth` frame first.
- `token(principal, token)`: an `auth` frame arrived; return the authenticated principal or raise `Denied`.
- `http(request_headers, action, job)`: an HTTP request (`action` is one of `ACTIONS`); raise `Denied` to
  refuse it (401/403).
- `may_read(principal, job)`: may this principal subscribe to / read this job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

ACTIONS: Final = frozenset({"submit", "attach", "read", "list", "cancel"})


class Denied(Exception):
    """Refused. `status` is the HTTP status (401 or 403); `close_code` the websocket close code."""

    def __init__(self, message: str, *, status: int = 403, close_code: int = 4501) -> None:
        super().__init__(message)
        self.status = status
        self.close_code = close_code


@dataclass(frozen=True)
class Principal:
    name: str = "anonymous"
    needs_token: bool = False
    #: Jobs this principal may read; None = any.
    jobs: frozenset[str] | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)


class Authorizer(Protocol):
    async def connect(self, origin: str | None, headers: Mapping[str, str]) -> Principal: ...

    async def token(self, principal: Principal, token: str) -> Principal: ...

    async def http(self, headers: Mapping[str, str], action: str, job: str | None) -> Principal: ...

    async def may_read(self, principal: Principal, job: str) -> bool: ...


class AllowAll:
    """No authentication: everyone may do everything. The default until API keys land."""

    async def connect(self, origin: str | None, headers: Mapping[str, str]) -> Principal:
        return Principal()

    async def token(self, principal: Principal, token: str) -> Principal:
        return principal

    async def http(self, headers: Mapping[str, str], action: str, job: str | None) -> Principal:
        return Principal()

    async def may_read(self, principal: Principal, job: str) -> bool:
        return True
