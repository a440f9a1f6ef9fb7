"""`WS /v1/ws`: the msgpack websocket protocol of docs/protocol.md (section 2).

One `Connection` per socket. It reads client frames (`auth`, `sub`, `unsub`, `pong`), runs one task per
subscription and one pinger, and ends with a `bye` (and a close with the same code) for every reason it
ends on its own. Each subscription is a cursor over the job's journal (`Hub.records`): `subscribed`, then
`ev` frames from `from + 1`, and after each `item` record its bytes as `chunk` frames read from disk unless
the subscriber asked for `inline: false`.

Sends are serialized per connection and none may take longer than `send_timeout_s`: a subscriber that does
not read its socket gets `bye 4001` and resumes later from its last seq; nothing is queued for it meanwhile.
A client so stalled that even the `bye` cannot be written sees the connection drop instead. The deadline is
the connection's, not each frame's: one timer per connection checks the send in progress (a timer armed and
cancelled per 256 KiB frame cost more than the frame's own Python).

Auth (relay.api.auth): a connection either authenticates with an `Authorization` header on the upgrade, or must
send an `auth` frame within `auth_timeout_s` (else `bye 4501`). Connections waiting for their `auth` frame
have their own budget (`max_pending_auth`, `PendingAuth`), apart from `max_connections`, which counts
authenticated ones only: past it the connection waiting longest is closed with `bye 4004`, so a flood of
sockets that never authenticate cannot lock out a client that does (it authenticates within one round trip). A token's expiry ends the connection with
`bye 4003` (get a new token, reconnect and resume); an `auth` frame with a fresh token before then extends
it, and subscriptions the new token does not cover end with `err forbidden`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any, Final

import msgpack
from starlette.websockets import WebSocket, WebSocketDisconnect

from podstream import frames
from podstream.frames import CloseCode
from relay.api.auth import Denied, Principal
from relay.service import Relay
from relay.storage.errors import BadJobId, JobBroken, MediaGone, MediaRetry, check_job_id, transient
from relay.storage.job import ITEM, JobStore

log = logging.getLogger("podstream.relay.ws")

PROTOCOL_VERSION: Final = 1
SERVER: Final = "podstream-relay"

INTERNAL: Final = 1011


class Bye(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class _Gone(Exception):
    """The client went away (disconnect, reset): nothing more to say to it."""


class PendingAuth:
    """The connections waiting for their `auth` frame, oldest first, at most `limit` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._waiting: OrderedDict[Connection, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, connection: Connection) -> Connection | None:
        """Count `connection` in; returns the one that waited longest when that makes too many."""
        self._waiting[connection] = None
        if len(self._waiting) > self.limit:
            oldest, _ = self._waiting.popitem(last=False)
            return oldest
        return None

    def discard(self, connection: Connection) -> None:
        self._waiting.pop(connection, None)


def pack(frame: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(frame, use_bin_type=True)
    return data


class Connection:
    def __init__(self, ws: WebSocket, relay: Relay, pending: PendingAuth | None = None) -> None:
        self.ws = ws
        self.relay = relay
        self.pending = pending if pending is not None else PendingAuth(relay.settings.max_pending_auth)
        self.settings = relay.settings
        self.principal = Principal()
        self.authenticated = False
        self.subscriptions: dict[str, asyncio.Task[None]] = {}
        self.last_seen = time.monotonic()
        #: When a data frame (not a ping) last left for the client's socket: a subscriber draining bulk data
        #: is alive even while its pongs wait behind megabytes of chunks.
        self.last_progress = self.last_seen
        self._send_lock = asyncio.Lock()
        #: When the send in progress began (the loop's clock), None between sends; `_send_deadline` checks it.
        self._sending_since: float | None = None
        self._sender: asyncio.Task[Any] | None = None  # the task whose send is in progress
        self._overdue: asyncio.Task[Any] | None = None  # the sender `_send_deadline` cancelled
        self._deadline: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        # Bound once: `labels()` per frame was a dict lookup and a lock per 256 KiB frame.
        self._bytes_out = relay.metrics.bytes_out.labels("ws")
        self._ended: asyncio.Future[Bye | None] = asyncio.get_running_loop().create_future()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._expiry: asyncio.Task[None] | None = None
        self.sent_frames = 0

    @property
    def subscribed(self) -> int:
        return len(self.subscriptions)

    # ------------------------------------------------------------------ lifecycle

    async def serve(self) -> None:
        try:
            await self._serve()
        finally:
            self._closed.set()

    async def _serve(self) -> None:
        origin = self.ws.headers.get("origin")
        try:
            self.principal = await self.relay.auth.connect(origin, dict(self.ws.headers))
        except Denied as exc:
            self.relay.metrics.denied.labels(exc.code).inc()
            await self.ws.accept()
            await self._close(Bye(exc.close_code, str(exc)))
            return
        await self.ws.accept()
        if not self.principal.needs_token and self._full():
            await self._close(Bye(CloseCode.TOO_MANY_CONNECTIONS, "too many connections; retry later"))
            return
        self.relay.connections.add(self)
        try:
            if not self.principal.needs_token:
                await self._welcome()
                self._watch_expiry()
            else:
                evicted = self.pending.add(self)
                if evicted is not None:
                    evicted._end(
                        Bye(CloseCode.TOO_MANY_CONNECTIONS, "too many connections waiting for auth; retry")
                    )
                self._spawn(self._auth_deadline())
            self._spawn(self._read_loop())
            self._spawn(self._ping_loop())
            bye = await self._ended
        finally:
            if self._deadline is not None:
                self._deadline.cancel()
            self.pending.discard(self)
            self.relay.connections.discard(self)
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
        if bye is not None:
            await self._close(bye)

    async def bye(self, code: int, reason: str) -> None:
        """End this connection with `bye code` (from outside, e.g. on shutdown); returns once it is said."""
        self._end(Bye(code, reason))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(5.0, self.settings.send_timeout_s + 1.0)):
                await self._closed.wait()

    def _end(self, bye: Bye | None) -> None:
        if not self._ended.done():
            self._ended.set_result(bye)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, coro: Awaitable[None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Bye as bye:
            self._end(bye)
        except (_Gone, WebSocketDisconnect, OSError):
            self._end(None)
        except Exception:
            log.exception("websocket task failed")
            self._end(Bye(INTERNAL, "internal error"))

    async def _close(self, bye: Bye) -> None:
        self.relay.metrics.disconnects.labels(str(bye.code)).inc()
        grace = min(2.0, self.settings.send_timeout_s)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(grace):
                async with self._send_lock:
                    await self.ws.send_bytes(pack(frames.bye(bye.code, bye.reason)))
        with contextlib.suppress(Exception):
            async with asyncio.timeout(grace):
                await self.ws.close(bye.code, bye.reason[:120])

    # ------------------------------------------------------------------ sending

    async def send(self, frame: bytes, *, progress: bool = True) -> None:
        """Send one frame; it completes once the transport took it (uvicorn waits while the client's socket
        does not drain), so a completed data frame is progress: the client is reading. A send still not
        done after `send_timeout_s` ends the connection with `bye 4001` (`_send_deadline`)."""
        async with self._send_lock:
            self._sending_since = self._loop.time()
            self._sender = sender = asyncio.current_task()
            if self._deadline is None:
                self._deadline = self._loop.call_at(
                    self._sending_since + self.settings.send_timeout_s, self._send_deadline
                )
            try:
                await self.ws.send_bytes(frame)
            except asyncio.CancelledError:
                # Cancelled by the deadline (and nothing else): the slow consumer's bye, as a timeout would.
                if self._overdue is sender and sender is not None:
                    self._overdue = None
                    if sender.uncancel() == 0:
                        raise Bye(
                            CloseCode.SLOW_CONSUMER, "slow consumer: resume from your last seq"
                        ) from None
                raise
            finally:
                self._sending_since = self._sender = None
        self.sent_frames += 1
        if progress:
            self.last_progress = time.monotonic()
        self._bytes_out.inc(len(frame))

    def _send_deadline(self) -> None:
        """The connection's send deadline: cancel the send in progress when it is older than
        `send_timeout_s` (it raises `bye 4001`, as a per-send timeout did), else look again when that send would be (one timer per connection, re-armed at most once per
        `send_timeout_s`; none while nothing is being sent)."""
        self._deadline = None
        since, sender = self._sending_since, self._sender
        if since is None or sender is None:
            return
        due = since + self.settings.send_timeout_s
        if self._loop.time() >= due:
            self._overdue = sender
            sender.cancel()  # its `send` turns this into `bye 4001`
        else:
            self._deadline = self._loop.call_at(due, self._send_deadline)

    def _full(self) -> bool:
        """No room for one more authenticated connection (those waiting for auth do not count)."""
        authenticated = len(self.relay.connections) - len(self.pending) - (self in self.relay.connections)
        return authenticated >= self.settings.max_connections

    async def _welcome(self) -> None:
        self.pending.discard(self)
        if self._full():
            raise Bye(CloseCode.TOO_MANY_CONNECTIONS, "too many connections; retry later")
        self.authenticated = True
        await self.send(pack(frames.welcome(PROTOCOL_VERSION, SERVER, self.settings.ping_interval_s)))

    async def _err(self, code: str, message: str, job: str | None = None) -> None:
        await self.send(pack(frames.err(code, message, job)))

    # ------------------------------------------------------------------ receiving

    async def _read_loop(self) -> None:
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise _Gone()
            self.last_seen = time.monotonic()
            data = message.get("bytes")
            if data is None:
                raise Bye(CloseCode.MALFORMED_FRAME, "binary msgpack frames only")
            if len(data) > self.settings.max_frame_bytes:
                raise Bye(
                    CloseCode.FRAME_TOO_LARGE, f"frames are limited to {self.settings.max_frame_bytes} bytes"
                )
            try:
                frame = msgpack.unpackb(data, raw=False)
            except Exception:
                raise Bye(CloseCode.MALFORMED_FRAME, "not a msgpack frame") from None
            await self._dispatch(frame)

    async def _dispatch(self, raw: object) -> None:
        try:
            if frames.frame_type(raw) != "auth" and not self.authenticated:
                raise Bye(CloseCode.UNAUTHORIZED, "send an auth frame with a token first")
            frame = frames.parse_client(raw)
        except frames.FrameError as exc:
            raise Bye(CloseCode.MALFORMED_FRAME, str(exc)) from None
        if isinstance(frame, frames.Auth):
            try:
                self.principal = await self.relay.auth.token(self.principal, frame.token)
            except Denied as exc:
                self.relay.metrics.denied.labels(exc.code).inc()
                raise Bye(exc.close_code, str(exc)) from None
            self._watch_expiry()
            if not self.authenticated:
                await self._welcome()
            else:
                await self._drop_uncovered()
            return
        if isinstance(frame, frames.Sub):
            await self._subscribe(frame)
        elif isinstance(frame, frames.Unsub):
            task = self.subscriptions.pop(frame.job, None)
            if task is None:
                await self._err("not_subscribed", "no subscription to this job", frame.job)
            else:
                task.cancel()
        # a Pong: the client is alive (`last_seen`), nothing to answer

    async def _subscribe(self, frame: frames.Sub) -> None:
        job, after, inline = frame.job, frame.after, frame.inline
        if job in self.subscriptions:
            await self._err("already_subscribed", "already subscribed to this job", job)
            return
        if len(self.subscriptions) >= self.settings.max_subscriptions:
            raise Bye(
                CloseCode.TOO_MANY_SUBSCRIPTIONS, f"at most {self.settings.max_subscriptions} subscriptions"
            )
        try:
            check_job_id(job)
        except BadJobId as exc:
            await self._err("bad_job", str(exc), job[:128])
            return
        # Authorization before the lookup: a token for job A must not tell whether job B exists.
        if not await self.relay.auth.may_read(self.principal, job):
            await self._err("forbidden", "not allowed to read this job", job)
            return
        try:
            store = self.relay.job(job)
        except JobBroken as exc:  # the store knows why (e.g. "its job.json is missing")
            await self._err("broken_job", str(exc), job)
            return
        except Exception:
            # One damaged job (e.g. an unreadable job.json) fails its own `sub`, not the connection.
            log.exception("cannot open job %s for a subscriber", job, extra={"job": job})
            await self._err("broken_job", "the relay cannot read this job's files (logged)", job)
            return
        if store is None:
            await self._err("not_found", "this relay does not know the job", job)
            return
        task = self._spawn(self._stream(store, after, inline))
        self.subscriptions[job] = task

    # ------------------------------------------------------------------ auth

    async def _auth_deadline(self) -> None:
        await asyncio.sleep(self.settings.auth_timeout_s)
        if not self.authenticated:
            raise Bye(CloseCode.UNAUTHORIZED, "send an auth frame with a token first")

    def _watch_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.principal.expires is not None:
            self._expiry = self._spawn(self._expire_at(self.principal.expires))

    async def _expire_at(self, when: float) -> None:
        await asyncio.sleep(max(0.0, when - time.time()))
        raise Bye(CloseCode.TOKEN_EXPIRED, "token expired: get a new token, then reconnect")

    async def _drop_uncovered(self) -> None:
        """After a fresh `auth`: end the subscriptions the new principal may not read."""
        for job in list(self.subscriptions):
            if not await self.relay.auth.may_read(self.principal, job):
                task = self.subscriptions.pop(job)
                task.cancel()
                await self._err("forbidden", "the new token does not allow this job", job)

    # ------------------------------------------------------------------ a subscription

    async def _stream(self, store: JobStore, after: int, inline: bool) -> None:
        job = store.job
        head = store.journal.published
        expected = store.meta.get("expected_items")  # None when the input did not say
        await self.send(pack(frames.subscribed(job, head, store.status, after <= head, expected)))
        async with contextlib.aclosing(self.relay.hub.records(store, after)) as records:
            async for record in records:
                await self.send(pack(frames.ev(job, self.relay.public(record))))
                if inline and record["k"] == ITEM:
                    await self._send_item(store, record)
        if self.subscriptions.get(job) is asyncio.current_task():
            del self.subscriptions[job]

    async def _send_item(self, store: JobStore, record: dict[str, Any]) -> None:
        try:
            path = await self.relay.hub.media.check(
                store, record
            )  # verified once per process, not per subscriber
        except MediaGone as exc:
            await self._err("media_unavailable", str(exc), store.job)
            return
        except MediaRetry as exc:
            raise Bye(CloseCode.TRY_AGAIN, f"{exc}: reconnect and resume from your last seq") from None
        if path is None:
            return  # uploaded out of band (a ref): the client fetches record["url"]
        head = {"job": store.job, "seq": record["seq"], "item": record["item"]}
        size = record["size"]
        chunks = self.relay.chunks
        for offset in chunks.offsets(size):
            try:
                # A frame already encoded (the common case: K subscribers read the same chunk) is taken
                # without a coroutine; only a miss awaits the shared load.
                frame = chunks.cached(path, offset) or await chunks.frame(path, head, offset, size)
            except OSError as exc:
                if transient(exc):  # EMFILE, ENOSPC, EIO...: the file is still there, try again
                    raise Bye(
                        CloseCode.TRY_AGAIN, "reading the item failed for now: reconnect and resume"
                    ) from None
                message = f"the file of item {record['item']} is no longer available"
                await self._err("media_unavailable", message, store.job)
                return
            await self.send(frame)

    # ------------------------------------------------------------------ keepalive

    async def _ping_loop(self) -> None:
        interval, timeout = self.settings.ping_interval_s, self.settings.ping_timeout_s
        n = 0
        while True:
            await asyncio.sleep(interval)
            # Alive: a frame from the client, or data drained to it, within the window. A client reading
            # nothing stalls the data sends (bye 4001 after send_timeout_s) and sends no pong (4002).
            if time.monotonic() - max(self.last_seen, self.last_progress) > interval + timeout:
                raise Bye(CloseCode.PING_TIMEOUT, "no pong in time")
            n += 1
            await self.send(pack(frames.ping(n)), progress=False)


async def websocket_endpoint(ws: WebSocket) -> None:
    relay: Relay = ws.app.state.relay
    pending: PendingAuth = ws.app.state.pending_auth
    await Connection(ws, relay, pending).serve()
