"""Bring your own handler: `podstream.wrap(handler)` (this `wrap`) streams the files of any existing RunPod
handler.

    runpod.serverless.start({"handler": podstream.wrap(handler), "return_aggregate_stream": False})

`handler(job)` is what it was before: a sync or async function returning a JSON-able result, or a sync or
async generator yielding several. The wrapper walks each result (each yield, as soon as it is yielded) and
finds the files in it:

- `bytes` / `bytearray` / `memoryview`;
- `data:` URLs with `;base64`, and bare base64 strings of at least `min_base64_chars` characters that decode
  strictly (RunPod handlers return their files this way);
- PIL images and numpy image arrays (uint8, `(H, W)` or `(H, W, 1|3|4)`), encoded as PNG;
- paths (`str` or `Path`) to existing files under `output_dir` (`PODSTREAM_OUTPUT_DIR`).

Each file is streamed as numbered `part` envelopes (podstream.wire), far under RunPod's 1 MB chunk cap, and
replaced in the result by `{"$file": item}`. Then the result itself is yielded as `result` envelopes (for a
generator: the list of its yields, as `return_aggregate_stream` would have made it), then the manifest.

RunPod's failure semantics are kept: an exception from the handler, or a result that is a dict with a truthy
`"error"`, ends the job FAILED with that error on `/status`. The manifest of the files streamed so far is
yielded first, so those files stay available and complete to every consumer.

The returned function is itself an async generator function, as the SDK requires for streaming
(`inspect.isasyncgenfunction`); sync handlers run in a worker thread, so the event loop never blocks.

Recovery works as for the built-in worker: every envelope is recorded in the output cache (`worker.cache`)
before it is yielded, and a `{"resend": {...}}` job (sent by a relay that found a gap) is answered from it,
without calling the handler.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import io
import logging
import math
import mimetypes
import os
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

from podstream import wire
from worker import allocator
from worker.cache import CacheConfig, CacheWriter, OutputCache
from worker.manifest import Manifest

log = logging.getLogger("worker.wrapper")

Envelope: TypeAlias = dict[str, Any]
WrappedHandler: TypeAlias = Callable[[dict[str, Any]], AsyncGenerator[Envelope, None]]

_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,", re.ASCII)
#: Leading bytes of the file types handlers return, to name a decoded file's mime type.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"GIF8", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"ftyp", 4, "video/mp4"),
    (b"\x1a\x45\xdf\xa3", 0, "video/webm"),
    (b"WAVE", 8, "audio/wav"),
    (b"ID3", 0, "audio/mpeg"),
    (b"OggS", 0, "audio/ogg"),
    (b"%PDF", 0, "application/pdf"),
)


@dataclass(frozen=True)
class WrapConfig:
    """What counts as a file, and how files are split. `from_env` reads `PODSTREAM_OUTPUT_DIR` and
    `PODSTREAM_WRAP_MIN_BASE64`."""

    min_base64_chars: int = 1024  # shorter bare base64 strings stay strings (ids, hashes, tokens)
    output_dir: Path | None = None  # paths to files under it are streamed; None: paths stay strings
    part_bytes: int = wire.DEFAULT_PART_BYTES
    body_budget: int = wire.DEFAULT_BODY_BUDGET
    cache: CacheConfig | None = None  # None: no output cache, so nothing can be resent
    cache_sweep_interval_s: float = 60.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> WrapConfig:
        raw = environ.get("PODSTREAM_WRAP_MIN_BASE64")
        out = environ.get("PODSTREAM_OUTPUT_DIR")
        try:
            chars = int(raw) if raw else cls.min_base64_chars
        except ValueError:
            raise ValueError(f"PODSTREAM_WRAP_MIN_BASE64={raw!r} is not a number") from None
        cache = CacheConfig.from_env(environ)
        return cls(min_base64_chars=chars, output_dir=Path(out) if out else None, cache=cache)


@dataclass
class _Found:
    """A file found in a result: `load` gives its bytes and mime type (decoding/encoding is deferred, so at
    most one found file is decoded at a time)."""

    item: int
    id: str
    load: Callable[[], tuple[bytes, str]]


@dataclass
class _Walk:
    """Replaces files by references while walking a value; numbers them densely across the whole job."""

    config: WrapConfig
    next_item: int = 0
    found: list[_Found] = field(default_factory=list)

    def value(self, value: Any, path: str) -> Any:
        file = self._file(value, path)
        if file is not None:
            item = self.next_item
            self.next_item += 1
            self.found.append(_Found(item, path[-wire.MAX_ID_CHARS :], file))
            return wire.file_ref(item)
        if isinstance(value, Mapping):
            walked = {str(k): self.value(v, _join(path, str(k))) for k, v in value.items()}
            return wire.escape(walked)
        if isinstance(value, list | tuple):
            return [self.value(v, _join(path, str(i))) for i, v in enumerate(value)]
        numpy = _module("numpy")
        if numpy is not None and isinstance(value, numpy.ndarray | numpy.generic):
            return value.tolist()  # not an image (that was taken above): plain numbers
        if isinstance(value, Path):
            return str(value)
        return value

    def _file(self, value: Any, path: str) -> Callable[[], tuple[bytes, str]] | None:
        if isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
            return lambda: (data, _sniff(data))
        if isinstance(value, str):
            return self._string(value)
        if isinstance(value, Path):
            return self._path(value)
        pil = _module("PIL.Image")
        if pil is not None and isinstance(value, pil.Image):
            return lambda: (_png(value), "image/png")
        numpy = _module("numpy")
        if numpy is not None and isinstance(value, numpy.ndarray) and _is_image_array(value):
            return lambda: (_png_array(value), "image/png")
        return None

    def _string(self, text: str) -> Callable[[], tuple[bytes, str]] | None:
        match = _DATA_URL.match(text) if text.startswith("data:") else None
        if match is not None:
            payload, declared = text[match.end() :], match.group(1)
            if _decodes(payload):
                return lambda: _decoded(payload, declared)
            return None
        if len(text) >= self.config.min_base64_chars and len(text) % 4 == 0 and _BASE64.fullmatch(text):
            if _decodes(text):
                return lambda: _decoded(text, None)
            return None
        if self.config.output_dir is not None and len(text) < 4096 and ("/" in text or os.sep in text):
            return self._path(Path(text))
        return None

    def _path(self, path: Path) -> Callable[[], tuple[bytes, str]] | None:
        root = self.config.output_dir
        if root is None:
            return None
        try:
            resolved = path.resolve()
            if not resolved.is_relative_to(root.resolve()) or not resolved.is_file():
                return None
        except (OSError, ValueError):
            return None
        mime = mimetypes.guess_type(resolved.name)[0] or "application/octet-stream"
        return lambda: (resolved.read_bytes(), mime[: wire.MAX_MIME_CHARS])


def wrap(handler: Callable[[dict[str, Any]], Any], config: WrapConfig | None = None) -> WrappedHandler:
    """An async generator handler for `runpod.serverless.start` that streams `handler`'s files (see above)."""
    if not callable(handler):
        raise TypeError(f"wrap() needs a handler function, got {type(handler).__name__}")
    cfg = config or WrapConfig.from_env()
    allocator.limit_arenas()  # the wrapped handler's files pass between threads too (worker.allocator)
    cache = OutputCache(cfg.cache) if cfg.cache is not None and cfg.cache.enabled else None
    swept = [-math.inf]

    async def streaming(job: dict[str, Any]) -> AsyncGenerator[Envelope, None]:
        from podstream import jobspec
        from worker import handler as builtin  # the resend answer and the input check are the built-in's

        if jobspec.is_resend(job.get("input")):
            async for resent in builtin.resend(cache, job):
                yield resent
            return
        if cache is not None and time.monotonic() - swept[0] >= cfg.cache_sweep_interval_s:
            swept[0] = time.monotonic()
            await asyncio.to_thread(cache.sweep)
        job_id = job.get("id") if isinstance(job.get("id"), str) and job.get("id") else "local"
        envs = wire.Envelopes(str(job_id)[: wire.MAX_ID_CHARS], budget=cfg.body_budget)
        run = _Run(envs, cfg, cache.writer(envs.job, envs.run) if cache is not None else None)
        values: list[Any] = []
        generator = inspect.isgeneratorfunction(handler) or inspect.isasyncgenfunction(handler)
        try:
            try:
                async for value in _outputs(handler, job):
                    if isinstance(value, Mapping) and value.get("error"):
                        # RunPod's own FAILED convention: close what was streamed, then give the SDK the error.
                        for envelope in run.manifest():
                            yield envelope
                        yield {"error": value["error"]}
                        return
                    walked = run.walk.value(value, str(len(values)) if generator else "")
                    async for envelope in run.stream_found():
                        yield envelope
                    values.append(walked)
            except Exception:
                for envelope in run.manifest():  # the files already streamed stay available, then FAILED
                    yield envelope
                raise
            for envelope in run.recorded(envs.result(values if generator else values[0])):
                yield envelope
            for envelope in run.manifest():
                yield envelope
        finally:
            if run.cached is not None:
                run.cached.close()

    streaming.__name__ = getattr(handler, "__name__", "handler")
    streaming.__doc__ = getattr(handler, "__doc__", None)
    return streaming


class _Run:
    """The envelopes of one wrapped job: files as they are found, then the manifest."""

    def __init__(self, envs: wire.Envelopes, config: WrapConfig, cached: CacheWriter | None) -> None:
        self.envs = envs
        self.config = config
        self.cached = cached
        self.walk = _Walk(config)
        self.contents = Manifest(envs)

    def recorded(self, envelopes: Iterable[Envelope]) -> Iterator[Envelope]:
        """Each envelope, recorded in the output cache first (a dropped POST can then be resent)."""
        for envelope in envelopes:
            if self.cached is not None:
                self.cached.record(envelope)
            yield envelope

    async def stream_found(self) -> AsyncIterator[Envelope]:
        found, self.walk.found = self.walk.found, []
        for file in found:
            try:
                data, mime = await asyncio.to_thread(file.load)
            except Exception as exc:  # a file that cannot be read or encoded fails that item, not the job
                log.warning("job %s: file %s failed: %s", self.envs.job, file.id, exc)
                failed = self.envs.error(file.item, "file_failed", _message(exc), id=file.id)
                self.contents.record(failed)
                for envelope in self.recorded([failed]):
                    yield envelope
                continue
            if self.cached is not None:
                await asyncio.to_thread(self.cached.put_item, file.item, data)
            digest = await asyncio.to_thread(wire.sha256_hex, data)  # off the loop that sends the parts
            parts = self.recorded(
                self.envs.parts(
                    file.item,
                    data,
                    mime=mime or "application/octet-stream",
                    id=file.id,
                    part_bytes=self.config.part_bytes,
                    sha256=digest,
                )
            )
            for envelope in parts:
                self.contents.record(envelope)
                yield envelope
            del data

    def manifest(self) -> list[Envelope]:
        return list(self.recorded(self.contents.envelopes()))


async def _outputs(handler: Callable[[dict[str, Any]], Any], job: dict[str, Any]) -> AsyncIterator[Any]:
    """Each value the handler produces: its return value, or each of its yields (sync ones in a thread)."""
    if inspect.isasyncgenfunction(handler):
        async for value in handler(job):
            yield value
        return
    if inspect.isgeneratorfunction(handler):
        iterator: Generator[Any, None, None] = handler(job)
        done = object()
        try:
            while (value := await asyncio.to_thread(next, iterator, done)) is not done:
                yield value
        finally:
            await asyncio.to_thread(iterator.close)
        return
    if inspect.iscoroutinefunction(handler):
        yield await handler(job)
        return
    result = await asyncio.to_thread(handler, job)
    if inspect.isawaitable(result):  # e.g. a callable object whose __call__ is async
        result = await result
    yield result


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _module(name: str) -> Any:
    """A module only if the handler's process already imported it: wrapping never imports numpy or PIL."""
    import sys

    return sys.modules.get(name)


def _decodes(payload: str) -> bool:
    try:
        base64.b64decode(payload[:4096], validate=True)  # a prefix: decoding it all happens when streamed
    except (binascii.Error, ValueError):
        return False
    return not payload[4096:] or _BASE64.fullmatch(payload) is not None


def _decoded(payload: str, declared: str | None) -> tuple[bytes, str]:
    data = base64.b64decode(payload, validate=True)
    return data, declared or _sniff(data)


def _sniff(data: bytes) -> str:
    for magic, offset, mime in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return mime
    return "application/octet-stream"


def _is_image_array(array: Any) -> bool:
    shape = array.shape
    return (
        str(array.dtype) == "uint8"
        and (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3, 4)))
        and min(shape[:2]) >= 1
    )


def _png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png_array(array: Any) -> bytes:
    from PIL import Image

    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return _png(Image.fromarray(array))


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}"[: wire.MAX_MESSAGE_CHARS] if text else type(exc).__name__
