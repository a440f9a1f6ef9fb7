"""Helpers shared by the worker tests: input images, running a handler, decoding its files."""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from PIL import Image

from podstream import wire
from worker.model import Context, Model, Request, Result


def png_base64(width: int = 40, height: int = 30, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


#: The image `serve_images()` serves at `/ok.png` (24x16).
SERVED_PNG = base64.b64decode(png_base64(24, 16))


class ImageRequests(http.server.BaseHTTPRequestHandler):
    """`/ok.png` (`SERVED_PNG`), `/redirect?to=<location>`, `/big.png` (5000 bytes), `/slow.png` (a byte
    every 50 ms), else 404."""

    def do_GET(self) -> None:
        if self.path == "/ok.png":
            self._send(200, SERVED_PNG)
        elif self.path.startswith("/redirect?to="):
            self.send_response(302)
            self.send_header("Location", self.path.removeprefix("/redirect?to="))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/big.png":
            self._send(200, b"x" * 5000)
        elif self.path == "/slow.png":
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(40):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass  # the client gave up, as it should
        else:
            self._send(404, b"no")

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve_images() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 (`ImageRequests`, in a thread), stopped on exit: yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ImageRequests)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


async def collect(stream: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [envelope async for envelope in stream]


@dataclass
class Reassembled:
    envelopes: list[dict[str, Any]]
    assembler: wire.Assembler
    problems: list[wire.Problem] = field(default_factory=list)

    def file(self, item: int) -> bytes:
        data = self.assembler.completed[item].result
        assert isinstance(data, bytes)
        return data

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.envelopes if e["type"] == kind]


def reassemble(envelopes: Sequence[dict[str, Any]], job: str) -> Reassembled:
    assembler = wire.Assembler(job)
    problems: list[wire.Problem] = []
    for envelope in envelopes:
        problems += [e for e in assembler.feed(envelope) if isinstance(e, wire.Problem)]
    problems += assembler.finish()
    return Reassembled(list(envelopes), assembler, problems)


def decode_video(data: bytes) -> tuple[int, int, int, str]:
    """(frames, width, height, codec) of an encoded video."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        frames = list(container.decode(video=0))
        return len(frames), frames[0].width, frames[0].height, stream.codec_context.name


class Spy:
    """Wraps a model: counts generated items and keeps the last Context, to watch the machinery."""

    def __init__(self, inner: Model) -> None:
        self.inner = inner
        self.tasks = inner.tasks
        self.generated = 0
        self.calls = 0
        self.running = False
        self.ctx: Context | None = None
        self.released = 0

    def generate(self, batch: Sequence[Request], ctx: Context) -> Sequence[Result | BaseException]:
        self.ctx, self.running = ctx, True
        self.calls += 1
        try:
            results = self.inner.generate(batch, ctx)
            self.generated += len(batch)
            return results
        finally:
            self.running = False

    def check(self, task: str, params: Any) -> None:
        check = getattr(self.inner, "check", None)
        if check is not None:
            check(task, params)

    def release(self) -> None:
        self.released += 1
        self.inner.release()
