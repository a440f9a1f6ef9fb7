"""Gap recovery: getting back envelopes RunPod or the relay lost, from the workers' output cache.

Envelopes go missing in two ways: RunPod's SDK drops a stream item silently when its POST fails (a 4xx, a
connection error), and a relay killed between draining a `/stream` answer and writing it loses that answer
(RunPod hands each item out once). Either way the job's dense `seq`s show it when the stream ends: seqs
below the highest one received never arrived, or the manifest (always last) is missing, or the manifest
lists more than arrived.

Before the poller journals a job's end checks and its `done` record, `GapRecovery.recover` asks for what is
missing with a RunPod job of its own on the same endpoint:

    {"input": {"resend": {"job": J, "run": R, "seqs": [3, [7, 9]], "after": N}}}

(`seqs`: the missing seqs, ranges as `[first, last]`; `after`: when the manifest never came, every seq above
the highest one received). Whichever worker takes it answers from its output cache (worker/cache.py: the
network volume, shared by the endpoint's workers, or a temp dir) by yielding those envelopes again, exactly
as first yielded (same job, run and seqs), then a summary `{"resent": {...}}`. The relay drains that job's
`/stream` and feeds each envelope of the original job and run it has not seen into the original job's
reassembly (`JobPoller.ingest`): files, ingest log and journal, as if it had come the first time. A resend
job's own stream can lose items too, and a worker may not have the job in its cache (`not_cached`: without
a network volume only the worker that ran the job has it), so the relay asks again for what is still
missing, up to `recovery_attempts` resend jobs, as long as the last one brought something back or was
answered by a worker without the job.

What is still missing afterwards is reported: one `error` record `unrecovered` saying why (not cached,
the resend job failed or timed out), followed by the usual end checks (`gap`, `incomplete`,
`missing_item`, `missing_manifest`) from the poller. A cancelled job is not recovered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from podstream import wire
from relay.config import RelaySettings
from relay.ingest.runpod import RunPodClient, RunPodError, StreamBatch
from relay.ingest.worker_errors import one_line_error
from relay.storage.job import ERROR

if TYPE_CHECKING:
    from relay.ingest.poller import JobPoller

log = logging.getLogger("podstream.relay.recovery")

#: Seqs listed one by one in a request before they are sent as ranges.
_MAX_RANGES: Final = 10_000
_NOT_RECOVERED: Final = "unrecovered"


@dataclass(frozen=True)
class ResendRequest:
    job: str
    run: str | None
    seqs: tuple[int, ...]
    after: int | None

    def input(self) -> dict[str, Any]:
        body: dict[str, Any] = {"job": self.job}
        if self.run is not None:
            body["run"] = self.run
        if self.seqs:
            body["seqs"] = compact(self.seqs)
        if self.after is not None:
            body["after"] = self.after
        return {"resend": body}

    def describe(self) -> str:
        parts = []
        if self.seqs:
            parts.append(f"{len(self.seqs)} missing seq(s) ({_ranges(self.seqs)})")
        if self.after is not None:
            parts.append(f"everything after seq {self.after} (the manifest never came)")
        return " and ".join(parts)


def compact(seqs: tuple[int, ...] | list[int]) -> list[int | list[int]]:
    """`[1, 2, 3, 7]` -> `[[1, 3], 7]`: a bounded request however many seqs are missing."""
    out: list[int | list[int]] = []
    ordered = sorted(set(seqs))
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        out.append(ordered[i] if i == j else [ordered[i], ordered[j]])
        i = j + 1
    if len(out) > _MAX_RANGES:  # pathological: ask for everything from the first gap on
        return [[ordered[0], ordered[-1]]]
    return out


def _ranges(seqs: tuple[int, ...]) -> str:
    text = ", ".join(str(x) if isinstance(x, int) else f"{x[0]}-{x[1]}" for x in compact(seqs)[:10])
    return text + (", ..." if len(compact(seqs)) > 10 else "")


def wanted(assembler: wire.Assembler, highest_seen: int, status: str) -> ResendRequest | None:
    """What a finished stream is missing, or None when nothing is (or a cancelled job is not worth it)."""
    if status == "CANCELLED" or assembler.job is None:
        return None
    missing = tuple(assembler.missing())
    after: int | None = None
    if assembler.manifest is None and status == "COMPLETED":
        # A completed job always ends with its manifest: whatever came after the last seq seen was lost.
        after = highest_seen
    if not missing and after is None:
        return None
    return ResendRequest(assembler.job, assembler.run, missing, after)


@dataclass
class Outcome:
    """What one resend job brought back."""

    job: str = ""
    status: str = ""
    fed: int = 0
    ignored: int = 0
    summary: dict[str, Any] = field(default_factory=dict)
    error: str = ""

    @property
    def reason(self) -> str:
        if self.error:
            return self.error
        reason = self.summary.get("reason")
        if reason == "not_cached":
            return "the worker that took the resend job does not have this job in its output cache"
        if reason == "no_cache":
            return "the worker that took the resend job has its output cache turned off"
        if reason == "incomplete_cache":
            return "the worker's output cache does not hold every envelope of this job"
        if not self.summary:
            return f"the resend job ended {self.status or 'without an answer'} (a worker without resend support?)"
        return "the worker's output cache did not have them"


class GapRecovery:
    """Recovers missing envelopes of a job at the end of its stream (see the module docstring)."""

    def __init__(
        self,
        *,
        attempts: int = 2,
        timeout_s: float = 300.0,
        wait_ms: int = 2000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.wait_ms = wait_ms
        self._clock = clock
        self.recovered = 0  # envelopes brought back, over the relay's life (metrics, tests)

    @classmethod
    def from_settings(cls, settings: RelaySettings) -> GapRecovery:
        """The relay's gap recovery: `recovery_attempts` resend jobs (0: report gaps, never resend), each
        followed for up to `recovery_timeout_s`, long-polled like the job itself."""
        return cls(
            attempts=settings.recovery_attempts,
            timeout_s=settings.recovery_timeout_s,
            wait_ms=settings.poll_wait_ms,
        )

    async def recover(self, poller: JobPoller, status: str) -> None:
        client = poller.client
        request = wanted(poller.assembler, poller.highest_seq, status)
        if request is None or client is None or self.attempts <= 0:
            return
        first = request
        outcomes: list[Outcome] = []
        for _attempt in range(self.attempts):
            log.info("job %s: asking the workers to resend %s", request.job, request.describe())
            outcome = await self._resend(poller, client, request)
            outcomes.append(outcome)
            self.recovered += outcome.fed
            request_after = wanted(poller.assembler, poller.highest_seq, status)
            if request_after is None:
                log.info(
                    "job %s: gap recovery brought back all %d envelope(s)",
                    first.job,
                    sum(o.fed for o in outcomes),
                )
                return
            request = request_after
            # Again only when it may help: another worker may have the job, or this attempt made progress
            # (its own stream can lose items too).
            if outcome.summary.get("reason") != "not_cached" and outcome.fed == 0:
                break
        fed = sum(o.fed for o in outcomes)
        jobs = ", ".join(o.job for o in outcomes if o.job) or "none"
        message = (
            f"gap recovery (resend job(s) {jobs}) brought back {fed} envelope(s); still missing "
            f"{request.describe()}: {outcomes[-1].reason}"
        )
        log.warning("job %s: %s", first.job, message)
        await asyncio.to_thread(
            _record, poller, [(ERROR, {"item": None, "code": _NOT_RECOVERED, "message": message})]
        )
        poller.publish()

    async def _resend(self, poller: JobPoller, client: RunPodClient, request: ResendRequest) -> Outcome:
        outcome = Outcome()
        try:
            answer = await client.run(request.input())
        except RunPodError as exc:
            outcome.error = f"submitting the resend job failed: {exc}"
            return outcome
        outcome.job = str(answer["id"])
        deadline = self._clock() + self.timeout_s
        try:
            while True:
                if self._clock() > deadline:
                    outcome.error = f"the resend job {outcome.job} did not finish within {self.timeout_s:g} s"
                    await _cancel(client, outcome.job)
                    return outcome
                batch = await client.stream(outcome.job, wait_ms=self.wait_ms)
                fresh = self._select(poller, batch.outputs, outcome)
                if fresh:
                    await asyncio.to_thread(_ingest, poller, fresh)
                    poller.publish()
                    outcome.fed += len(fresh)
                if batch.finished:
                    outcome.status = batch.status
                    if batch.status != "COMPLETED" and not outcome.summary:
                        outcome.error = await _failure(client, outcome.job, batch.status)
                    return outcome
        except RunPodError as exc:
            outcome.error = f"following the resend job {outcome.job} failed: {exc}"
            return outcome

    def _select(self, poller: JobPoller, outputs: list[object], outcome: Outcome) -> list[dict[str, Any]]:
        """The envelopes of the original job and run not seen yet, in order; notes the summary."""
        assembler = poller.assembler
        fresh: list[dict[str, Any]] = []
        seen: set[int] = set()
        for output in outputs:
            if not isinstance(output, dict):
                outcome.ignored += 1
                continue
            summary = output.get("resent")
            if isinstance(summary, dict) and len(output) == 1:
                outcome.summary = summary
                continue
            seq, run = output.get("seq"), output.get("run")
            if (
                output.get("job") != assembler.job
                or not isinstance(seq, int)
                or (assembler.run is not None and run != assembler.run)
                or assembler.seen(seq)
                or seq in seen
                or (fresh and run != fresh[0].get("run"))
            ):
                outcome.ignored += 1
                continue
            seen.add(seq)
            fresh.append(output)
        return fresh


def _ingest(poller: JobPoller, envelopes: list[dict[str, Any]]) -> None:
    poller.ingest(list(envelopes))
    poller.store.commit()


def _record(poller: JobPoller, entries: list[tuple[str, dict[str, Any]]]) -> None:
    poller.store.record(entries)
    poller.store.commit()


async def _cancel(client: RunPodClient, job: str) -> None:
    try:
        await client.cancel(job)
    except RunPodError as exc:
        log.warning("cancelling the resend job %s failed: %s", job, exc)


async def _failure(client: RunPodClient, job: str, status: str) -> str:
    try:
        error = (await client.status(job)).get("error")
    except RunPodError:
        error = None
    detail = f": {one_line_error(error)}" if error else ""
    return f"the resend job {job} ended {status}{detail}"


def crash_after_drain(n: int) -> Callable[[StreamBatch], None] | None:
    """Tests only (`PODSTREAM_TEST_CRASH_AFTER_DRAIN`): SIGKILL this process once its n-th non-empty `/stream`
    answer has been drained from RunPod, before any of it is written: a crash between draining and persisting.
    None for n = 0 (the setting's default: no hook, answers are taken in pieces)."""
    if n <= 0:
        return None
    drained = 0

    def on_drained(batch: StreamBatch) -> None:
        nonlocal drained
        drained += 1
        if drained >= n:
            log.critical("test fault: killing the relay after draining %d /stream answer(s)", drained)
            os.kill(os.getpid(), signal.SIGKILL)

    return on_drained
