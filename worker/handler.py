"""The RunPod handler: an async generator that streams every file of a job as numbered envelopes.

One job flows through four stages joined by bounded queues, so memory does not grow with the batch:

    prepare (thread: fetch/decode images) -> generate (thread: the model, one batch at a time)
        -> encode (thread: MP4/WebM/PNG/...) -> this generator (yields parts, progress, errors, manifest)

The generator is suspended while the SDK POSTs each yield; the threads keep going meanwhile, so generation
of item k+1 overlaps encoding of item k and the POSTs of item k-1. Progress leaves the generation thread
through the event loop (`call_soon_threadsafe`) and is coalesced to one envelope per `progress_interval_s`.

Failures, from the smallest:
- a bad item (input, image, generation or encoding error) becomes an `error` envelope; the batch goes on;
- a malformed job raises `JobInputError` before anything is generated: the SDK ends the job FAILED with
  the message on `/status` (the SDK never puts that error on the stream);
- a crash of the machinery itself (a bug) raises too: FAILED, with what was streamed so far kept;
- cancellation (`asyncio.CancelledError`, or the generator closed early) stops generation at its next
  step, waits for the threads, frees the model's memory (`Model.release`) and re-raises.

Delivery and recovery (docs/worker.md): after encoding, a file the job's `delivery` option sends out of band
is uploaded (`worker.upload`, in the encode thread) and only a `ref` envelope is yielded; an upload that fails
after its retries falls back to streaming the parts. Every envelope is recorded in the output cache
(`worker.cache`) before it is yielded, so a `{"resend": {...}}` job can yield it again, unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import secrets
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, TypeAlias

from podstream import jobspec, wire
from podstream.jobspec import ItemError, Job, JobInputError, Limits
from worker import allocator, inputs
from worker.cache import CacheConfig, CacheWriter, OutputCache, Selection
from worker.manifest import Manifest
from worker.model import Cancelled, Context, File, Image, Model, Request, Result, Video
from worker.upload import UploadConfig, Uploader, UploadFailed

log = logging.getLogger("worker")

Envelope: TypeAlias = dict[str, Any]
Handler: TypeAlias = Callable[[dict[str, Any]], AsyncGenerator[Envelope, None]]


@dataclass(frozen=True)
class HandlerConfig:
    """Every knob of the streaming machinery, with its default."""

    limits: Limits = field(default_factory=Limits.from_env)  # PODSTREAM_MAX_ITEMS, PODSTREAM_INPUT_HOSTS, ...
    progress_interval_s: float = 0.5  # at most ~2 progress envelopes per second
    encoded_buffer: int = 1  # encoded files waiting for their POSTs (each up to one file in memory)
    body_budget: int = wire.DEFAULT_BODY_BUDGET
    upload: UploadConfig = field(default_factory=UploadConfig.from_env)  # PODSTREAM_UPLOAD_*
    cache: CacheConfig = field(default_factory=CacheConfig.from_env)  # PODSTREAM_CACHE_*
    cache_sweep_interval_s: float = 60.0


@dataclass(frozen=True)
class _Encoded:
    index: int
    id: str
    data: bytes
    mime: str
    seed: int | None = None
    sha256: str | None = None  # set in the encode thread (`JobRun._deliver`), so the loop never hashes


@dataclass(frozen=True)
class _Uploaded:
    index: int
    id: str
    mime: str
    size: int
    sha256: str
    url: str
    seed: int | None = None


_Outcome: TypeAlias = _Encoded | _Uploaded | ItemError
_Generated: TypeAlias = tuple[Request, Result] | ItemError


def make_handler(model: Model, config: HandlerConfig | None = None) -> Handler:
    """The async generator function to hand to `runpod.serverless.start` (it must *be* one, not return one)."""
    cfg = config or HandlerConfig()
    allocator.limit_arenas()  # before the job's threads exist: one arena keeps RSS flat (worker.allocator)
    lock = threading.Lock()  # one generation at a time on this model, whatever the SDK's concurrency
    cache = OutputCache(cfg.cache) if cfg.cache.enabled else None
    uploader = Uploader(cfg.upload) if cfg.upload.configured else None
    sweeper = _Sweeper(cache, cfg.cache_sweep_interval_s) if cache is not None else None

    async def handler(job: dict[str, Any]) -> AsyncGenerator[Envelope, None]:
        if jobspec.is_resend(job.get("input")):
            async for resent in resend(cache, job):
                yield resent
            return
        # One generator, no nested ones: when the SDK's task is cancelled mid-POST, this generator is
        # closed (GeneratorExit at its yield) and `close` runs here, in order.
        run = JobRun(model, job, cfg, lock, cache=cache, uploader=uploader)
        if sweeper is not None:
            sweeper.maybe_start()  # after the run's cache directory exists, beside the job, never before it
        run.start()
        try:
            while (envelope := await run.next()) is not None:
                if run.cached is not None:
                    run.cached.record(envelope)  # before the POST: a dropped POST can be resent
                yield envelope
        finally:
            await run.close()

    return handler


class _Sweeper:
    """Bounds the output cache (`OutputCache.sweep`) at most once per `interval_s`, in a thread of its own
    beside the job that started it: the job does not wait for it. Walking a cache on a network volume
    shared by an endpoint's workers takes tens of milliseconds to seconds, which the job's first file would
    otherwise wait for. The sweep starts after the job's own run directory exists; that run is the newest,
    so neither the TTL nor the size bound deletes it. One sweep at a time."""

    def __init__(self, cache: OutputCache, interval_s: float) -> None:
        self.cache, self.interval_s = cache, interval_s
        self._lock = threading.Lock()
        self._last = -math.inf
        self._thread: threading.Thread | None = None

    def maybe_start(self) -> threading.Thread | None:
        """Start a sweep when one is due and none is running; the thread started, or None."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return None
            if time.monotonic() - self._last < self.interval_s:
                return None
            self._last = time.monotonic()
            self._thread = threading.Thread(target=self._sweep, name="podstream-cache-sweep", daemon=True)
            self._thread.start()
            return self._thread

    def _sweep(self) -> None:
        try:
            removed = self.cache.sweep()
        except Exception:
            log.exception("sweeping the output cache failed")
        else:
            if removed:
                log.info("output cache: %d old run(s) or job(s) deleted", len(removed))


class JobRun:
    """One run of one job. Construction validates the input (`JobInputError`); then `start()`, `next()`
    until it returns None, and `close()` in every case."""

    def __init__(
        self,
        model: Model,
        job: dict[str, Any],
        config: HandlerConfig,
        lock: threading.Lock,
        *,
        cache: OutputCache | None = None,
        uploader: Uploader | None = None,
    ) -> None:
        job_id = job.get("id")
        if not isinstance(job_id, str) or not job_id:
            raise JobInputError("the job has no id")
        if "input" not in job or job["input"] is None:
            raise JobInputError("the job has no input")
        input_model = getattr(model, "input_model", None)  # a model's own input schema (docs/worker.md)
        if input_model is not None:
            task = sorted(model.tasks)[0] if model.tasks else "custom"
            self.spec: Job = jobspec.parse_custom(job["input"], input_model, task, config.limits)
        else:
            known = {
                *jobspec.TASKS,
                *model.tasks,
            }  # built-in names parse; the model check below names its own
            self.spec = jobspec.parse_job(job["input"], config.limits, tasks=known)
        if self.spec.task not in model.tasks:
            raise JobInputError(
                f"input.task: this worker's model does not do {self.spec.task!r}; it does {sorted(model.tasks)}"
            )
        check = getattr(model, "check", None)  # optional: a model's own shape rules (multiples of 8, ...)
        if check is not None:
            try:
                check(self.spec.task, self.spec.params)
            except ValueError as exc:
                raise JobInputError(str(exc)) from None
        self.job_id = job_id
        self.model = model
        self.config = config
        self.lock = lock
        self.envs = wire.Envelopes(job_id, budget=config.body_budget)
        self.ctx = Context(self._on_progress)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._progress: tuple[Sequence[int], int, int] | None = None
        self._progress_at = 0.0
        self.started = time.monotonic()
        self._executor: ThreadPoolExecutor | None = None
        self._stages: list[asyncio.Task[None]] = []
        self._getter: asyncio.Task[_Outcome | None] | None = None
        self._pending: collections.deque[Envelope] = collections.deque()
        self._parts: Iterator[Envelope] | None = None
        self._manifest = Manifest(self.envs)
        self._finished = False
        self.uploader = uploader
        self.cached: CacheWriter | None = cache.writer(job_id, self.envs.run) if cache is not None else None
        if self.spec.delivery == "upload" and uploader is None:
            log.warning(
                "job %s asks for delivery 'upload' but no PODSTREAM_UPLOAD_URL is set: streaming", job_id
            )

    # ---- driving it: start, next until None, close (always)

    def start(self) -> None:
        """Start the stages on the running loop."""
        self._loop = loop = asyncio.get_running_loop()
        self._executor = executor = ThreadPoolExecutor(3, thread_name_prefix=f"podstream-{self.job_id[:16]}")
        prepared: asyncio.Queue[list[Request | ItemError] | None] = asyncio.Queue(1)
        generated: asyncio.Queue[list[_Generated] | None] = asyncio.Queue(1)
        self._encoded: asyncio.Queue[_Outcome | None] = asyncio.Queue(self.config.encoded_buffer)
        self._stages = [
            asyncio.create_task(self._prepare(loop, executor, prepared)),
            asyncio.create_task(self._generate(loop, executor, prepared, generated)),
            asyncio.create_task(self._encode(loop, executor, generated, self._encoded)),
        ]
        log.info("job %s: %s, %d item(s)", self.job_id, self.spec.task, len(self.spec.items))

    async def next(self) -> Envelope | None:
        """The next envelope to yield, or None after the last manifest page. Raises if a stage crashed."""
        while True:
            if not self._pending:
                self._pending.extend(self._due_progress())
            if self._pending:
                return self._pending.popleft()
            if self._parts is not None:
                envelope = next(self._parts, None)
                if envelope is not None:
                    return envelope
                self._parts = None
            if self._finished:
                return None
            outcome = await self._next_outcome()
            if outcome is None:
                continue
            if isinstance(outcome, ItemError):
                log.info("job %s: item %d failed: %s", self.job_id, outcome.index, outcome.message)
                failed = self.envs.error(outcome.index, outcome.code, outcome.message, id=outcome.id)
                self._manifest.record(failed)
                self._pending.append(failed)
            elif isinstance(outcome, _Uploaded):
                ref = self.envs.ref(
                    outcome.index, url=outcome.url, mime=outcome.mime, size=outcome.size,
                    sha256=outcome.sha256, id=outcome.id,
                )  # fmt: skip
                self._manifest.record(ref, seed=outcome.seed)
                self._pending.append(ref)
            else:
                self._parts = self._item_parts(outcome)

    def _item_parts(self, outcome: _Encoded) -> Iterator[Envelope]:
        part_bytes = self.spec.output.part_bytes
        for envelope in self.envs.parts(
            outcome.index,
            outcome.data,
            mime=outcome.mime,
            id=outcome.id,
            part_bytes=part_bytes,
            sha256=outcome.sha256,
        ):
            self._manifest.record(envelope, seed=outcome.seed)
            yield envelope

    async def _next_outcome(self) -> _Outcome | None:
        """Wait (at most one progress interval) for the next encoded item; queue the manifest after the last."""
        if self._getter is None:
            self._getter = asyncio.create_task(self._encoded.get())
        alive = {t for t in self._stages if not t.done()}
        await asyncio.wait(
            {self._getter, *alive}, timeout=self.config.progress_interval_s, return_when="FIRST_COMPLETED"
        )
        for stage in self._stages:
            if stage.done() and not stage.cancelled() and (error := stage.exception()) is not None:
                raise error
        if not self._getter.done():
            return None
        outcome, self._getter = self._getter.result(), None
        if outcome is None:
            self._pending.extend(self._manifest.envelopes())
            self._finished = True
            log.info("job %s: done in %.1f s", self.job_id, time.monotonic() - self.started)
        return outcome

    async def close(self) -> None:
        """Stop everything: generation at its next step, the stages, the threads; free memory if unfinished."""
        self.ctx.cancel()  # a no-op when everything finished
        waiting = [*self._stages, *([self._getter] if self._getter else [])]
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)
        self._parts = None
        if self.cached is not None:
            self.cached.close()
        if self._executor is not None and self._loop is not None:
            # A generation in flight ends at its next step; wait for it, then free the model's memory.
            await self._loop.run_in_executor(
                None, partial(self._executor.shutdown, wait=True, cancel_futures=True)
            )
            self._executor = None
        if not (self._finished and not self._pending):
            log.info("job %s: stopped", self.job_id)
            await asyncio.get_running_loop().run_in_executor(None, self._release)

    # ---- progress (generation thread -> loop -> stream)

    def _on_progress(self, items: Sequence[int], step: int, steps: int) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._set_progress, tuple(items), step, steps)

    def _set_progress(self, items: Sequence[int], step: int, steps: int) -> None:
        self._progress = (items, step, steps)

    def _due_progress(self) -> list[Envelope]:
        if self._progress is None:
            return []
        now = time.monotonic()
        if now - self._progress_at < self.config.progress_interval_s:
            return []
        items, step, steps = self._progress
        self._progress, self._progress_at = None, now
        return [self.envs.progress(item, step, steps) for item in items]

    # ---- stages

    def _batches(self) -> list[list[jobspec.Item | ItemError]]:
        size = self.spec.params.batch_size
        items = list(self.spec.items)
        return [items[i : i + size] for i in range(0, len(items), size)]

    async def _prepare(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: ThreadPoolExecutor,
        out: asyncio.Queue[list[Request | ItemError] | None],
    ) -> None:
        start = 0
        for batch in self._batches():
            await out.put(await loop.run_in_executor(executor, self._load, start, batch))
            start += len(batch)
        await out.put(None)

    def _load(self, start: int, batch: list[jobspec.Item | ItemError]) -> list[Request | ItemError]:
        """Requests for a batch of items: `params.num_images` per item, output k of item i being file
        `i * num_images + k` with seed `seed + k` (a seed left out is drawn at random, and reported)."""
        count = self.spec.params.num_images
        loaded: list[Request | ItemError] = []
        for index, item in enumerate(batch, start):
            if isinstance(item, ItemError):
                loaded += [
                    ItemError(index * count + k, item.id, item.code, item.message) for k in range(count)
                ]
                continue
            image = None
            if item.image is not None:
                try:
                    source, sha256 = inputs.image_source(item, self.spec.inputs_url)
                    image = inputs.load_image(source, self.config.limits, sha256)
                except inputs.ImageError as exc:
                    message = f"input.items[{index}].image: {exc}"
                    loaded += [ItemError(index * count + k, item.id, exc.code, message) for k in range(count)]
                    continue
            negative = (
                item.negative_prompt if item.negative_prompt is not None else self.spec.params.negative_prompt
            )
            seed = item.seed if item.seed is not None else secrets.randbelow(jobspec.SEED_LIMIT)
            for k in range(count):
                loaded.append(
                    Request(
                        index * count + k, item.id, self.spec.task, self.spec.params, item.prompt, negative,
                        image, (seed + k) % 2**63, input=self.spec.custom, output=k,
                    )
                )  # fmt: skip
        return loaded

    async def _generate(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: ThreadPoolExecutor,
        source: asyncio.Queue[list[Request | ItemError] | None],
        out: asyncio.Queue[list[_Generated] | None],
    ) -> None:
        while (batch := await source.get()) is not None:
            await out.put(await loop.run_in_executor(executor, self._run_model, batch))
        await out.put(None)

    def _run_model(self, batch: list[Request | ItemError]) -> list[_Generated]:
        requests = [r for r in batch if isinstance(r, Request)]
        results: dict[int, Result | BaseException] = {}
        if requests:
            with self.lock:
                self.ctx.check()
                self.ctx.items = tuple(r.index for r in requests)
                try:
                    produced = self.model.generate(requests, self.ctx)
                    if len(produced) != len(requests):
                        raise RuntimeError(
                            f"the model returned {len(produced)} results for {len(requests)} inputs"
                        )
                    results = {r.index: p for r, p in zip(requests, produced, strict=True)}
                except Cancelled:
                    raise
                except Exception as exc:
                    log.exception("job %s: generation failed", self.job_id)
                    self._release()
                    results = {r.index: exc for r in requests}
        out: list[_Generated] = []
        for entry in batch:
            if isinstance(entry, ItemError):
                out.append(entry)
                continue
            result = results[entry.index]
            if isinstance(result, BaseException):
                out.append(ItemError(entry.index, entry.id, "generation_failed", _message(result)))
            else:
                out.append((entry, result))
        return out

    async def _encode(
        self,
        loop: asyncio.AbstractEventLoop,
        executor: ThreadPoolExecutor,
        source: asyncio.Queue[list[_Generated] | None],
        out: asyncio.Queue[_Outcome | None],
    ) -> None:
        while (batch := await source.get()) is not None:
            for entry in batch:
                if isinstance(entry, ItemError):
                    await out.put(entry)
                else:
                    encoded = await loop.run_in_executor(executor, self._encode_one, *entry)
                    if isinstance(encoded, _Encoded):
                        await out.put(await loop.run_in_executor(executor, self._deliver, encoded))
                    else:
                        await out.put(encoded)
        await out.put(None)

    def _deliver(self, encoded: _Encoded) -> _Encoded | _Uploaded:
        """Upload the file when the job's delivery asks for it; otherwise (or when that fails) cache it for
        streaming. Runs in the encode thread."""
        digest = wire.sha256_hex(encoded.data)
        if self.uploader is not None and self.uploader.config.wants(self.spec.delivery, len(encoded.data)):
            try:
                url = self.uploader.upload(
                    self.job_id, encoded.index, encoded.data, mime=encoded.mime, sha256=digest
                )
            except UploadFailed as exc:
                log.warning("job %s: %s; streaming item %d instead", self.job_id, exc, encoded.index)
            else:
                size = len(encoded.data)
                return _Uploaded(encoded.index, encoded.id, encoded.mime, size, digest, url, encoded.seed)
        if self.cached is not None:
            self.cached.put_item(encoded.index, encoded.data)
        return replace(encoded, sha256=digest)

    def _encode_one(self, request: Request, result: Result) -> _Outcome:
        from worker import encode

        output = self.spec.output
        # A custom task without `output.format`: each result's kind picks the usual encoding.
        fmt = self.spec.format or ("mp4" if isinstance(result, Video) else "png")
        try:
            if isinstance(result, File):
                if (
                    not isinstance(result.data, bytes | bytearray)
                    or not result.mime
                    or len(result.mime) > wire.MAX_MIME_CHARS
                ):
                    raise encode.EncodeError(
                        "a File result needs bytes and a mime type of at most 100 characters"
                    )
                return _Encoded(request.index, request.id, bytes(result.data), result.mime, request.seed)
            if isinstance(result, Video):
                if fmt not in encode.VIDEO_FORMATS:
                    raise encode.EncodeError(f"the model made a video but the job asked for {fmt}")
                crf = output.crf if output.crf is not None else (23 if fmt == "mp4" else 32)
                fps = result.fps or self.spec.params.fps or 7.0
                settings = encode.VideoSettings(fmt, fps, crf, fragmented=output.fragmented)
                return _Encoded(
                    request.index,
                    request.id,
                    encode.encode_video(result.frames, settings),
                    encode.MIME[fmt],
                    request.seed,
                )
            if isinstance(result, Image):
                if fmt not in encode.IMAGE_FORMATS:
                    raise encode.EncodeError(f"the model made an image but the job asked for {fmt}")
                data = encode.encode_image(result.image, encode.ImageSettings(fmt, output.quality))
                return _Encoded(request.index, request.id, data, encode.MIME[fmt], request.seed)
            raise encode.EncodeError(
                f"the model returned {type(result).__name__}, not a Video, Image or File"
            )
        except Exception as exc:
            log.warning("job %s: encoding item %d failed: %s", self.job_id, request.index, exc)
            return ItemError(request.index, request.id, "encode_failed", _message(exc))

    def _release(self) -> None:
        try:
            self.model.release()
        except Exception:
            log.exception("job %s: releasing the model's memory failed", self.job_id)


async def resend(cache: OutputCache | None, job: dict[str, Any]) -> AsyncGenerator[Envelope, None]:
    """Answer a `resend` job: the requested envelopes of an earlier job, from the output cache, exactly as
    first yielded (same job, run and seqs), then one summary `{"resent": {...}}` (not an envelope) saying
    what could not be found. A malformed request raises `JobInputError` (the job ends FAILED)."""
    request = jobspec.parse_resend(job.get("input"))
    cached = await asyncio.to_thread(cache.open, request.job, request.run) if cache is not None else None
    summary: dict[str, Any] = {"job": request.job, "run": request.run, "count": 0}
    if cached is None:
        summary["reason"] = "not_cached" if cache is not None else "no_cache"
        log.info("resend of job %s: not in this worker's output cache", request.job)
        yield {"resent": summary}
        return
    selection = Selection(request.seqs, request.after, request.items)
    envelopes = cached.envelopes(selection)
    sent: set[int] = set()
    try:
        while (envelope := await asyncio.to_thread(next, envelopes, None)) is not None:
            sent.add(envelope["seq"])
            yield envelope
    finally:
        await asyncio.to_thread(envelopes.close)
    missing = sorted(s for s in request.seqs if s not in sent)
    summary.update(run=cached.run, count=len(sent), complete=cached.complete, last_seq=cached.last_seq)
    summary["missing"] = missing[:1000]
    summary["unavailable"] = cached.unavailable[:1000]
    if missing:
        summary["reason"] = "incomplete_cache"
    log.info("resend of job %s: %d envelope(s), %d not found", request.job, len(sent), len(missing))
    yield {"resent": summary}


def _message(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[: wire.MAX_MESSAGE_CHARS] if first else type(exc).__name__
