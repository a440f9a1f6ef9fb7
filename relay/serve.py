"""Running the relay under uvicorn with the settings the protocol needs.

uvicorn's sans-I/O `websockets` implementation, permessage-deflate off (media does not compress and
deflate costs CPU and memory per socket), an inbound message cap above the protocol's 64 KiB frame cap (so
the relay itself answers an oversized frame with `bye 4502`), and on shutdown a `bye 4000` to every
websocket before uvicorn closes them.
"""

from __future__ import annotations

import socket

import uvicorn
from starlette.applications import Starlette

from relay.app import create_app
from relay.config import RelaySettings
from relay.service import Relay

#: uvicorn refuses (1009) inbound messages above this; between 64 KiB and this the relay says 4502.
WS_MAX_SIZE = 1 << 20


def uvicorn_config(app: Starlette, settings: RelaySettings, **changes: object) -> uvicorn.Config:
    options: dict[str, object] = {
        "host": settings.host, "port": settings.port, "ws": "websockets-sansio",
        "ws_per_message_deflate": False, "ws_max_size": WS_MAX_SIZE, "lifespan": "on",
        "log_level": "info", "timeout_graceful_shutdown": settings.poll_wait_ms / 1000 + 5,
    }  # fmt: skip
    options.update(changes)
    return uvicorn.Config(app, **options)  # type: ignore[arg-type]


class RelayServer(uvicorn.Server):
    """uvicorn's server, saying `bye 4000` to every websocket before it shuts down."""

    def __init__(self, config: uvicorn.Config, relay: Relay) -> None:
        super().__init__(config)
        self.relay = relay

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self.relay.drain(4000, "server going away")
        await super().shutdown(sockets=sockets)


def serve(settings: RelaySettings, **changes: object) -> None:
    """Run the relay in the foreground until SIGINT/SIGTERM."""
    app = create_app(settings)
    server = RelayServer(uvicorn_config(app, settings, **changes), app.state.relay)
    server.run()
