"""Save a job's files from the runpod SDK's own stream: for programs that already call runpod-python.

    job = runpod.Endpoint(ENDPOINT_ID).run(job_input)
    outcome = podstream.save(job.stream(), out="out/", job=job)    # every file verified, then result.json

`Job.stream()` (runpod-python 1.12) polls `GET /stream/{job}` once a second and yields the `output` of each
entry, already unwrapped: here, one podstream envelope each (docs/protocol.md). `save` feeds them to the
same core as `podstream pull` (`puller.StreamDrain`: `wire.Assembler` with `sinks.file_sinks`), so the
directory it fills is the one `pull` and `watch` fill: each file written at its parts' offsets into a
hidden `.part`, its sha256 checked, fsynced and renamed to `{item:05d}-{id}.{ext}`; a file uploaded out of
band (a `ref`) fetched and checked the same way; a wrapped handler's result in `result.json` with each
file's path in place (`podstream.results`). `asave` is the same for `AsyncioJob.stream()`.

Nothing that arrives wrong becomes a file: an output that is no envelope, a corrupt part, an envelope the
stream lost (a gap) or an item the manifest lists that never arrived is a problem in the outcome, and with
`check` (the default) `JobIncomplete` is raised once everything that did arrive is saved.

The outputs do not say how the job ended. Given the SDK's job (`job=`), its `status()` is asked once the
stream has ended; without it, a stream that arrived whole (its manifest, nothing missing) counts as
COMPLETED and any other as UNKNOWN. So pass `job=` where a job can fail after streaming its last file (a
wrapped handler that raised): its stream is whole, its status FAILED.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterable, Iterable
from pathlib import Path
from typing import Any, Final, Protocol

import httpx

from podstream import wire
from podstream.progress import JobIncomplete, JobOutcome, Observer
from podstream.puller import StreamDrain, afetch_ref, fetch_ref

#: Fetching a file uploaded out of band (a `ref`): connect, and each read, within this many seconds.
REF_TIMEOUT_S: Final = 60.0


class RunPodJob(Protocol):
    """What `save` uses of the runpod SDK's `Job` (`status()` returns the status) or `AsyncioJob`
    (`status()` returns an awaitable of it)."""

    job_id: str

    def status(self) -> Any: ...


def save(
    outputs: Iterable[object],
    *,
    out: str | os.PathLike[str],
    job: RunPodJob | None = None,
    observer: Observer | None = None,
    check: bool = True,
    fsync: bool = True,
) -> JobOutcome:
    """Save the files of one job from `outputs` (what `Job.stream()` yields) in `out`; its outcome.

    With `check`, raises `JobIncomplete` at the end when the job did not complete with every item whole,
    after saving everything that did arrive. The SDK's own errors (a rejected key, a lost connection)
    pass through as it raised them.
    """
    if isinstance(outputs, AsyncIterable) or (job is not None and inspect.iscoroutinefunction(job.status)):
        raise TypeError("an AsyncioJob's stream: use `await podstream.asave(...)`")
    drain = _drain(job, out, observer, fsync)
    http: httpx.Client | None = None
    try:
        for output in outputs:
            for got in drain.feed_outputs("", (output,)):
                if isinstance(got, wire.ItemRef):
                    http = http or httpx.Client(timeout=REF_TIMEOUT_S)
                    fetch_ref(http, drain, got)
        return _end(drain, job.status() if job is not None else None, check)
    finally:
        drain.close()
        if http is not None:
            http.close()


async def asave(
    outputs: AsyncIterable[object],
    *,
    out: str | os.PathLike[str],
    job: RunPodJob | None = None,
    observer: Observer | None = None,
    check: bool = True,
    fsync: bool = True,
) -> JobOutcome:
    """`save` for asyncio programs: `outputs` is what `AsyncioJob.stream()` yields. Each output is decoded,
    hashed and written in a worker thread, so the event loop stays free."""
    if not isinstance(outputs, AsyncIterable):
        raise TypeError("not an async iterable: use `podstream.save(...)` for Job.stream()")
    drain = _drain(job, out, observer, fsync)
    http: httpx.AsyncClient | None = None
    try:
        async for output in outputs:
            for got in await asyncio.to_thread(drain.feed_outputs, "", (output,)):
                if isinstance(got, wire.ItemRef):
                    http = http or httpx.AsyncClient(timeout=REF_TIMEOUT_S)
                    await afetch_ref(http, drain, got)
        status = job.status() if job is not None else None
        return _end(drain, await status if inspect.isawaitable(status) else status, check)
    finally:
        drain.close()
        if http is not None:
            await http.aclose()


def _drain(
    job: RunPodJob | None, out: str | os.PathLike[str], observer: Observer | None, fsync: bool
) -> StreamDrain:
    return StreamDrain(job.job_id if job is not None else None, Path(out), observer, fsync=fsync)


def _end(drain: StreamDrain, status: object, check: bool) -> JobOutcome:
    """The outcome under the job's `status` (None: judged from the stream); raised with `check`."""
    if status is None:
        status = "COMPLETED" if drain.assembler.done else "UNKNOWN"
    drain.feed_outputs(str(status), ())
    outcome = drain.finish()
    if check and not outcome.ok:
        raise JobIncomplete(outcome)
    return outcome
