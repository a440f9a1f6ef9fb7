"""Running the relay under uvicorn with the settings the protocol needs.

uvicorn's sans-I/O `websockets` implementation, permessage-deflate off (media does not compress and
deflate costs CPU and memory per socket), an inbound message cap above the protocol's 64 KiB frame cap (so
the relay itself answers an oversized frame with `bye 4502`), and on shutdown a `bye 4000` to every
websocket before uvicorn closes them.

uvicorn keeps a connection that never sends a request open forever (its keep-alive timer starts only after a
first response), so an idle-connection flood ran the relay out of file descriptors. `GuardedH11Protocol`
closes a connection whose request headers are not complete within `header_timeout_s` (idle or trickling).
Client connections are capped below RLIMIT_NOFILE (`fd_budget`), keeping a reserve of descriptors for the
relay's own journals, media files and RunPod calls: at the cap a new connection closes the one that has
waited longest for its request headers (a real client sends them within a round trip, a flood never does),
and is refused only when every connection is busy with a real request. The listen backlog is kept below
the reserve too, since asyncio accepts a whole backlog's worth of sockets before any protocol sees them.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, ClassVar

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

from relay.api.app import create_app
from relay.api.limits import fd_budget, fd_limit
from relay.config import RelaySettings
from relay.service import Relay

if TYPE_CHECKING:
    from relay.storage.cluster.settings import ClusterSettings

#: uvicorn refuses (1009) inbound messages above this; between 64 KiB and this the relay says 4502.
WS_MAX_SIZE = 1 << 20


log = logging.getLogger("podstream.relay.serve")


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on request headers and a cap on open connections.

    `header_timeout_s` and `max_connections` are set per server by `uvicorn_config` (a subclass each)."""

    header_timeout_s: ClassVar[float] = 5.0
    max_connections: ClassVar[int] = 1 << 20
    #: Connections of this server waiting for request headers, oldest first (per-server: see uvicorn_config).
    waiting: ClassVar[OrderedDict[GuardedH11Protocol, None]] = OrderedDict()
    _refused_logged: ClassVar[float] = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._waiting_scope: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            cls = type(self)
            now = time.monotonic()
            if now - cls._refused_logged > 10:
                cls._refused_logged = now
                log.warning("connection budget reached (%d open of %d allowed by RLIMIT_NOFILE)",
                            len(self.connections), self.max_connections)  # fmt: skip
            if not self.waiting:
                transport.abort()  # every connection is busy with a real request: refused, the reserve stays
                return
            oldest, _ = self.waiting.popitem(last=False)
            oldest._disarm()
            oldest.transport.abort()
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        before = self.scope
        super().data_received(data)
        if self.scope is not before:
            self._disarm()  # a complete request (or a websocket upgrade) arrived
        if self._between_requests():
            self._arm()  # part of a next request on a kept-alive connection: it too has a deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if self.transport is not None:
            super().connection_lost(exc)

    def _between_requests(self) -> bool:
        if self.transport.get_protocol() is not self:
            return False  # upgraded to a websocket: no more HTTP requests, so no header deadline
        return not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete)

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._waiting_scope = self.scope
            self._header_deadline = self.loop.call_later(self.header_timeout_s, self._expire)
            self.waiting[self] = None

    def _disarm(self) -> None:
        self.waiting.pop(self, None)
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _expire(self) -> None:
        self._header_deadline = None
        self.waiting.pop(self, None)
        if self.scope is self._waiting_scope and self._between_requests():
            self.transport.close()


def uvicorn_config(app: Starlette, settings: RelaySettings, **changes: object) -> uvicorn.Config:
    limit = fd_limit()
    budget = fd_budget(limit, settings.fd_reserve)
    protocol = type(
        "RelayH11Protocol", (GuardedH11Protocol,),
        {"header_timeout_s": settings.header_timeout_s, "max_connections": budget, "waiting": OrderedDict()},
    )  # fmt: skip
    options: dict[str, object] = {
        "host": settings.host, "port": settings.port, "ws": "websockets-sansio", "http": protocol,
        "ws_per_message_deflate": False, "ws_max_size": WS_MAX_SIZE, "lifespan": "on",
        "log_level": "info", "timeout_graceful_shutdown": settings.poll_wait_ms / 1000 + 5,
        "backlog": min(2048, max(16, (limit - budget) // 2)),
    }  # fmt: skip
    options.update(changes)
    return uvicorn.Config(app, **options)  # type: ignore[arg-type]


class RelayServer(uvicorn.Server):
    """uvicorn's server, saying where it listens once it serves (uvicorn does not for sockets it is
    given) and `bye 4000` to every websocket before it shuts down."""

    def __init__(self, config: uvicorn.Config, relay: Relay) -> None:
        super().__init__(config)
        self.relay = relay

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        public = self.relay.settings.public_url
        for sock in sockets or ():
            log.info("listening on %s%s", address_url(sock), f" (public URL {public})" if public else "")

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.relay.drain(4000, "server going away")
        await super().shutdown(sockets=sockets)


def address_url(sock: socket.socket) -> str:
    """`http://127.0.0.1:8700`, `http://[::1]:8700`: where a listening socket takes connections."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """The listening socket, bound before uvicorn starts: a port in use is an `OSError` here, for one clear
    line from the caller (uvicorn would log its own and exit 3)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


def serve(settings: RelaySettings, *, cluster: ClusterSettings | None = None, **changes: object) -> None:
    """Run the relay in the foreground until SIGINT/SIGTERM; `OSError` when it cannot listen. `cluster`:
    as a replica on Redis and a bucket (docs/cluster.md)."""
    app = create_app(settings, cluster=cluster)
    config = uvicorn_config(app, settings, **changes)
    sock = listen(config.host, config.port, config.backlog)
    server = RelayServer(config, app.state.relay)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
