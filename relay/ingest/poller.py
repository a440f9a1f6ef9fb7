"""The single poller of each job: RunPod `/stream` -> `wire.Assembler` -> files and journal records.

`JobPoller.run` long-polls `GET /stream/{job}?wait=` until RunPod reports a terminal status with an empty
stream, feeding every `output` to the job's Assembler, whose sink writes parts straight into the job's media
directory (verified, fsynced, renamed). Each envelope's outcome becomes journal records (`item`, `progress`,
`error`, `status`); at the end a FAILED job's error is read from `/status` (RunPod never streams it) and the
Assembler's end checks (gaps, incomplete items, the manifest) are journaled as `error` records before the
final `done` record. Nothing is dropped silently.

Persist, then publish: a batch (one `/stream` answer) is written in a worker thread, the journal is
committed (fsynced), and only then are subscribers woken through `publish`.

Throughput: a `/stream` answer is taken in pieces as it arrives (`RunPodClient.stream(on_entries=...)`):
each piece is parsed and written in the worker thread while the next one is received, and all thread work
runs in order on one lane (`_then`). A part's base64 `data` is sliced straight out of its entry's JSON text
(`_entry_output`) instead of going through the JSON string decoder. Pieces are committed, then published,
as they are written (persist, then publish), grouped when they come faster than `GROUP_COMMIT_S`: a
backlog's first files reach subscribers while the rest of the answer is still being received, not all at
once after its last piece, and one commit's fsyncs cover several pieces.

Restart: every envelope the Assembler accepted is also written to the job's ingest log (`wire.log`, without
its bytes, with the journal head before it and the records it produced). `recover` replays that log into a
fresh Assembler (sinks ignore the bytes, which are on disk already) and journals records of a last envelope
whose records never made it, so the poller resumes with the state it had: seen seqs, half-received items,
the manifest. `PollerSet` keeps exactly one poller per job.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from podstream import wire
from podstream.stream_split import entry_output as _entry_output
from relay.errors import Busy, StopPolling
from relay.ingest import results
from relay.ingest.runpod import (
    TERMINAL,
    Backoff,
    JobNotFound,
    RunPodClient,
    RunPodError,
    StreamBatch,
)
from relay.ingest.worker_errors import one_line_error
from relay.storage.job import (
    DONE,
    ERROR,
    ITEM,
    JOURNAL_DAMAGED,
    LOST_RECORD,
    PROGRESS,
    STATUS,
    JobStore,
    seq_ranges,
)
from relay.storage.protocols import StoreSink

log = logging.getLogger("podstream.relay.poller")

Entry = tuple[str, dict[str, Any]]
#: Status of a job the relay could not follow to its end (RunPod no longer knows it).
LOST = "LOST"
#: Crashes of one poller journaled as `poller_crashed` records (later ones are only logged).
MAX_JOURNALED_CRASHES = 10
#: Pieces of one `/stream` answer are committed together when they come closer than this: a backlog's first
#: piece is committed (and published) at once, the next ones at most this often, and the rest with the
#: answer's end. Each commit costs an fsync of each media directory written, the ingest log and the journal.
GROUP_COMMIT_S = 0.1


def media_url(job: str, item: int) -> str:
    return f"/v1/jobs/{job}/media/{item}"


@lru_cache(maxsize=8)
def _zeros_b64(length: int) -> str:
    return base64.b64encode(bytes(length)).decode("ascii")


def _problem_entry(problem: wire.Problem, ids: Mapping[int, str] | None = None) -> Entry:
    item = getattr(problem, "item", None)
    body: dict[str, Any] = {"item": item, "code": problem.code, "message": problem.message}
    if isinstance(item, int) and ids and item in ids:
        body["id"] = ids[item]  # messages name a lost item by its id too, not only its number
    return ERROR, body


class Recovery(Protocol):
    """What the poller asks of gap recovery (relay/ingest/recovery.py `GapRecovery`) when a job's stream ends:
    to bring back what is missing, before the end checks and `done` are journaled."""

    async def recover(self, poller: JobPoller, status: str) -> None: ...


class JobPoller:
    def __init__(
        self,
        store: JobStore,
        client: RunPodClient | None,
        *,
        wait_ms: int = 10_000,
        backoff: Backoff | None = None,
        publish: Callable[[], None] = lambda: None,
        recovery: Recovery | None = None,
        on_drained: Callable[[StreamBatch], None] | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.wait_ms = wait_ms
        self.backoff = backoff or Backoff()
        self.publish = publish
        self.assembler = wire.Assembler(store.job, sink=self._sink)
        self.runs: list[str] = []
        self.status = store.status
        self.polls = 0
        self._replaying = False
        self._replayed: list[StoreSink] = []
        self._recovered = False
        self._reported: set[str] = set()
        self.stopping = False
        #: Highest seq of the current run accepted so far (gap recovery asks for what came after it).
        self.highest_seq = 0
        #: Recovers gaps at the end of the stream (relay/ingest/recovery.py); when None, the `PollerSet`'s is used.
        self.recovery = recovery
        #: Called with every non-empty `/stream` answer before it is written (a test-only crash hook; with
        #: it set, answers are taken whole instead of in pieces); when None, the `PollerSet`'s is used.
        self.on_drained = on_drained
        self._lane: asyncio.Future[None] | None = None  # the last thread work scheduled (`_then`)
        self._piece: asyncio.Future[None] | None = None  # the piece of the current answer being written
        self._opened = False  # the current answer's early status was handled
        self._committing: asyncio.Future[None] | None = None  # the commit of the previous answer
        self._committed_at = -GROUP_COMMIT_S  # when a piece was last committed (time.monotonic)

    def fresh(self) -> JobPoller:
        """A new poller of the same job with the same settings (what `PollerSet` restarts after a crash:
        it rebuilds its state from the files, as after a relay restart)."""
        return JobPoller(
            self.store,
            self.client,
            wait_ms=self.wait_ms,
            backoff=self.backoff,
            publish=self.publish,
            recovery=self.recovery,
            on_drained=self.on_drained,
        )

    # ---------------------------------------------------------------- sinks

    def _sink(self, item: int, id: str, mime: str, size: int) -> wire.ItemSink:
        run = self.assembler.run or ""
        if run not in self.runs:
            self.runs.append(run)
        directory = self.store.media_dir(self.runs.index(run) + 1)
        sink = self.store.media_sink(directory, item, id, mime, size, replaying=self._replaying)
        if self._replaying:
            self._replayed.append(sink)
        return sink

    # ---------------------------------------------------------------- events -> records

    def _entries(self, events: list[wire.Event]) -> list[Entry]:
        out: list[Entry] = []
        job = self.store.job
        for event in events:
            if isinstance(event, wire.ItemComplete):
                path: Path = event.result
                fields = {"item": event.item, "id": event.id, "mime": event.mime, "size": event.size}
                fields.update(sha256=event.sha256, url=media_url(job, event.item), delivery="stream")
                fields["_file"] = f"{path.parent.name}/{path.name}"
                out.append((ITEM, fields))
            elif isinstance(event, wire.ItemRef):
                fields = {"item": event.item, "id": event.id, "mime": event.mime, "size": event.size}
                uploaded = self._claim_upload(event)
                if uploaded is not None:  # uploaded to this relay: journaled like a streamed item
                    fields.update(sha256=event.sha256, url=media_url(job, event.item), delivery="upload")
                    fields["_file"] = f"{uploaded.parent.name}/{uploaded.name}"
                    out.append((ITEM, fields))
                else:
                    out.append(
                        (ITEM, {**fields, "sha256": event.sha256, "url": event.url, "delivery": "ref"})
                    )
            elif isinstance(event, wire.ItemFailed):
                out.append((ERROR, {"item": event.item, "code": event.code, "message": event.message}))
            elif isinstance(event, wire.Progress):
                out.append((PROGRESS, {"item": event.item, "step": event.step, "steps": event.steps}))
            elif isinstance(event, wire.ResultReceived):
                out.append(results.result_entry(event))
            elif isinstance(event, wire.Restarted):
                message = "RunPod re-ran the job (retry): the items that follow replace the earlier ones"
                out.append((ERROR, {"item": None, "code": "restarted", "message": message}))
            elif isinstance(event, wire.Problem):
                out.append(_problem_entry(event))
        return out

    def _claim_upload(self, ref: wire.ItemRef) -> Path | PurePosixPath | None:
        """The media of a `ref` uploaded to the relay (`PUT /v1/uploads`), made the item's media in its
        run; None when the ref points elsewhere."""
        run = self.assembler.run or ""
        if run not in self.runs:
            self.runs.append(run)
        return self.store.claim_upload(self.runs.index(run) + 1, ref)

    # ---------------------------------------------------------------- ingest (worker thread)

    def ingest(self, outputs: list[object]) -> None:
        """Feed one `/stream` answer's outputs, writing files, the ingest log and journal records."""
        for envelope in outputs:
            seq = envelope.get("seq") if isinstance(envelope, dict) else None
            fresh = isinstance(seq, int) and not (
                isinstance(envelope, dict)
                and envelope.get("run") == self.assembler.run
                and self.assembler.seen(seq)
            )
            events = self.assembler.feed(envelope)
            if any(isinstance(e, wire.Restarted) for e in events):
                self.highest_seq = 0
            if isinstance(seq, int) and self.assembler.seen(seq):
                self.highest_seq = max(self.highest_seq, seq)
            entries = self._entries(events)
            # What changed the Assembler's state must be replayable: accepted envelopes, and the last part of
            # an item that failed its sha256 (rejected, yet it ended the item).
            changed = self.assembler.seen(seq) if isinstance(seq, int) else False
            changed = changed or any(isinstance(e, wire.Corrupt) and e.code == "bad_sha256" for e in events)
            if fresh and isinstance(envelope, dict) and changed:
                self._log_envelope(envelope, events, entries)
            self.store.record(entries)

    def _ingest_piece(self, status: str, texts: list[bytes]) -> None:
        """Thread: some entries of the `/stream` answer being received (committed with the answer)."""
        if not self._opened:
            self._opened = True
            if status and status != self.status and status not in TERMINAL:
                self.store.record([(STATUS, {"status": status})])  # as `_commit_batch` would, first
                self.status = status
        self.ingest([_entry_output(text) for text in texts])
        if time.monotonic() - self._committed_at >= GROUP_COMMIT_S:  # else with a later piece, or after
            self._commit_pieces()  # before `_then` publishes: what subscribers see is on disk

    def _commit_pieces(self) -> None:
        """Thread: commit the records of the pieces written so far, if any."""
        if self.store.journal.published != self.store.journal.head and not self.store.closed:
            self._committed_at = time.monotonic()
            self.store.commit()

    def _log_envelope(self, envelope: dict[str, Any], events: list[wire.Event], entries: list[Entry]) -> None:
        meta = envelope
        rejected = 0
        if envelope.get("type") == wire.PART:
            meta = {k: v for k, v in envelope.items() if k != "data"}
            rejected = int(any(isinstance(e, wire.Corrupt) and e.code != "bad_sha256" for e in events))
        record = {"e": meta, "x": rejected, "h": self.store.journal.head, "r": [list(e) for e in entries]}
        self.store.wire.append([record])

    def recover(self) -> None:
        """Rebuild the Assembler from the ingest log (after a restart); safe on a new job.

        Journal records of envelopes whose records never made it to the journal (a crash between the two
        writes) are written again; a record the ingest log cannot give back becomes a `lost_record` error at
        its seq (so seqs stay dense), and damage found in the ingest log itself is journaled too."""
        if self._recovered:
            return
        self._recovered = True
        self._replaying = True
        lost: list[int] = []
        try:
            for _offset, record in self.store.wire.scan():
                envelope = dict(record["e"])
                if envelope.get("type") == wire.PART:
                    envelope["data"] = "!" if record["x"] else _zeros_b64(_part_bytes(envelope))
                if any(isinstance(e, wire.Restarted) for e in self.assembler.feed(envelope)):
                    self.highest_seq = 0
                if self.assembler.seen(envelope["seq"]):
                    self.highest_seq = max(self.highest_seq, envelope["seq"])
                before, entries = record["h"], record["r"]
                head = self.store.journal.head
                if entries and before + len(entries) > head:  # some of its records are not in the journal
                    if before > head:
                        lost.extend(range(head + 1, before + 1))
                        self.store.record([_lost_record(seq) for seq in range(head + 1, before + 1)])
                    done = max(0, head - before)
                    self.store.record([(kind, fields) for kind, fields in entries[done:]])
        finally:
            self._replaying = False
            for sink in self._replayed:
                sink.replaying = False
            self._replayed.clear()
        if self.store.partial_items_lost:
            dropped = wire.drop_partial(self.assembler)
            if dropped:
                log.info(
                    "job %s: items %s were half-received elsewhere; asking for them again",
                    self.store.job,
                    dropped,
                )
        problems = []
        if lost:
            problems.append(
                f"{len(lost)} journal record(s) (seq {seq_ranges(lost)}) were lost and could not be rebuilt"
            )
        if self.store.wire.damage:
            skipped = sum(n for _offset, n in self.store.wire.damage)
            kept = self.store.wire.quarantined
            problems.append(
                f"wire.log had {skipped} damaged byte(s), skipped"
                + (f" (the damaged file is kept as quarantine/{kept.name})" if kept is not None else "")
            )
        if problems:
            message = f"the job's files were damaged: {'; '.join(problems)}"
            log.warning("job %s: %s", self.store.job, message)
            self.store.record([_error(None, JOURNAL_DAMAGED, message)])
        self.store.commit()

    def finish(self, status: str) -> None:
        """The stream ended: journal the end checks and the `done` record."""
        manifest = self.assembler.manifest
        ids = {entry["item"]: entry["id"] for entry in manifest.items} if manifest is not None else {}
        entries = [_problem_entry(p, ids) for p in self.assembler.finish()]
        self.assembler.close()
        self.store.record(entries)
        self.store.commit()
        if manifest is None:
            self._record_commit(self._never_arrived())
        items = len(self.store.items)
        self.store.record([(DONE, {"status": status, "items": items, "errors": self.store.errors})])
        self.store.commit()

    def _never_arrived(self) -> list[Entry]:
        """Without a manifest, the items the job's input asked for (`expected_items`, counted at submit)
        that neither arrived nor failed: named one by one, since no seq of theirs ever came to show them."""
        expected = self.store.meta.get("expected_items")
        if not isinstance(expected, int) or isinstance(expected, bool):
            return []
        out = []
        for item in range(min(expected, wire.MAX_ITEMS)):
            if item not in self.store.items and item not in self.store.failed_items:
                message = (
                    f"item {item} never arrived, nor did the manifest "
                    f"(the job's input asks for {expected} item(s))"
                )
                out.append(_error(item, "missing_item", message))
        return out

    def _commit_batch(self, batch: StreamBatch, error: str | None) -> None:
        terminal = batch.status in TERMINAL
        changed = bool(batch.status) and batch.status != self.status
        status_entry: Entry = (STATUS, {"status": batch.status, **({"error": error} if error else {})})
        if changed and not terminal:
            self.store.record([status_entry])
        self.ingest(batch.outputs)
        if changed and terminal:
            self.store.record([status_entry])
        if changed:
            self.status = batch.status
        self.store.commit()

    # ---------------------------------------------------------------- the loop

    async def run(self) -> None:
        await _finish_in_thread(self.recover)
        self.publish()
        if self.store.finished:
            return
        if self.client is None:
            log.warning("job %s is unfinished but no RunPod URL is configured: not polling", self.store.job)
            return
        # Thread work (pieces of an answer, commits) runs in order on one lane, while the event loop goes on
        # receiving: the next piece, or the next long-poll while the previous answer is committed.
        failed = False
        try:
            failures = 0
            while not self.stopping:
                try:
                    self._piece = None
                    self._opened = False
                    pieces = self._on_entries if self.on_drained is None else None
                    batch = await self.client.stream(self.store.job, wait_ms=self.wait_ms, on_entries=pieces)
                    if batch.outputs and self.on_drained is not None:
                        self.on_drained(batch)
                    error = None
                    if batch.status == "FAILED" and self.status != "FAILED":
                        # What was drained lands on disk first: reading the error may take a while.
                        await self._then(self._ingest_commit, batch.outputs, publish=True)
                        delivered = batch.delivered + len(batch.outputs)
                        batch = dataclasses.replace(batch, outputs=[], delivered=delivered)
                        error = await self._failure_reason()
                        if error is None:  # stopping: the job resumes after the restart, its error read then
                            return
                except JobNotFound as exc:
                    await self._then(self._lost, str(exc), publish=True)
                    return
                except RunPodError as exc:
                    if self._piece is not None:  # an answer cut off: its pieces are committed
                        await self._then(self._record_commit, [], publish=True)
                    failures += 1
                    delay = self.backoff.delay(failures, random.random)
                    log.warning("polling job %s failed (%s); retrying in %.1fs", self.store.job, exc, delay)
                    if not exc.retryable and str(exc.status_code) not in self._reported:
                        self._reported.add(str(exc.status_code))
                        entry = _error(None, "runpod_error", f"the relay cannot poll RunPod: {exc}")
                        await self._then(self._record_commit, [entry], publish=True)
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                self.polls += 1
                if batch.finished:
                    await self._then(self._commit_batch, batch, error)
                    if self.recovery is not None:
                        await self.recovery.recover(self, batch.status)
                    await self._then(self.finish, batch.status, publish=True)
                    return
                # At most one answer waits to be committed while the next long-poll runs.
                previous = self._committing
                self._committing = self._then(self._commit_batch, batch, error, publish=True)
                if previous is not None:
                    await previous
        except BaseException:
            failed = True
            raise
        finally:
            if self._lane is not None:  # what was drained from RunPod lands on disk, even on cancel
                await asyncio.wait([self._lane])
                # The lane's last step carries any failure of the thread work: always taken here (never
                # left unretrieved), and raised if nothing else is.
                lane_error = None if self._lane.cancelled() else self._lane.exception()
                if self._piece is not None and not self.store.closed:  # an answer cut off: commit its pieces
                    await _finish_in_thread(self._record_commit, [])
                    self.publish()
                if lane_error is not None and not failed:
                    raise lane_error

    async def _on_entries(self, status: str, texts: list[bytes]) -> None:
        """A piece of the answer being received: written and committed while the next piece arrives (one at
        a time), then published."""
        if self._piece is not None:
            await self._piece
        self._piece = piece = self._then(self._ingest_piece, status, texts, publish=True)
        # Records a piece left uncommitted (group commit) wait for no longer than GROUP_COMMIT_S, even
        # when the rest of the answer is slow to come.
        asyncio.get_running_loop().call_later(GROUP_COMMIT_S, self._commit_if_idle, piece)

    def _commit_if_idle(self, piece: asyncio.Future[None]) -> None:
        if piece is self._piece and not self.store.closed:  # no piece came since: commit what is pending
            self._piece = self._then(self._commit_pieces, publish=True)

    def _then(self, fn: Callable[..., None], *args: Any, publish: bool = False) -> asyncio.Future[None]:
        """Run `fn(*args)` in a worker thread after the thread work scheduled before it (then `publish`)."""
        previous = self._lane

        async def step() -> None:
            if previous is not None:
                await previous
            await _finish_in_thread(fn, *args)
            if publish:
                self.publish()

        self._lane = asyncio.ensure_future(step())
        return self._lane

    async def _failure_reason(self) -> str | None:
        """A FAILED job's error, as one line (RunPod never streams it: `/status` has it). Retried with
        backoff until read; None if the relay stops first. The full error (the SDK's traceback) is logged."""
        assert self.client is not None
        attempt = 0
        while True:
            try:
                status = await self.client.status(self.store.job)
                break
            except JobNotFound as exc:
                return f"the job failed; RunPod no longer has its error ({exc})"
            except RunPodError as exc:
                attempt += 1
                delay = max(self.backoff.delay(attempt, random.random), self.backoff.base_s)
                log.warning(
                    "reading the error of failed job %s failed (%s); retrying in %.1fs",
                    self.store.job,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                if self.stopping:
                    return None
        error = status.get("error")
        if not error:
            return "the job failed without an error message"
        log.warning("job %s failed: %s", self.store.job, error)  # with the worker's traceback, for operators
        return one_line_error(error)

    def _ingest_commit(self, outputs: list[object]) -> None:
        self.ingest(outputs)
        self.store.commit()

    def _record_commit(self, entries: list[Entry]) -> None:
        self.store.record(entries)
        self.store.commit()

    def _lost(self, message: str) -> None:
        self._record_commit([_error(None, "not_found", message)])
        status = self.status if self.status in TERMINAL else LOST
        self.finish(status)


async def _finish_in_thread(fn: Callable[..., None], *args: Any) -> None:
    """Run `fn` in a worker thread; if cancelled meanwhile, wait for it to finish before re-raising.

    What was drained from RunPod must land on disk whole, and the job's files must not be closed under a
    write: shutdown cancels pollers, then closes the stores.
    """
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


def _error(item: int | None, code: str, message: str) -> Entry:
    return ERROR, {"item": item, "code": code, "message": message}


def _lost_record(seq: int) -> Entry:
    return ERROR, {
        "item": None,
        "code": LOST_RECORD,
        "message": f"journal record {seq} was lost and could not be rebuilt",
    }


def _part_bytes(envelope: dict[str, Any]) -> int:
    size, parts, k = envelope["size"], envelope["parts"], envelope["part"]
    length = wire.part_length(size, parts)
    return int(min(size, (k + 1) * length) - k * length)


class PollerSet:
    """Exactly one running `JobPoller` per job."""

    def __init__(
        self,
        limit: int = 1000,
        *,
        restart_backoff: Backoff | None = None,
        rng: Callable[[], float] = random.random,
        recovery: Recovery | None = None,
        on_drained: Callable[[StreamBatch], None] | None = None,
    ) -> None:
        self.limit = limit
        #: Delays between restarts of a crashed poller.
        self.restart_backoff = restart_backoff or Backoff(1.0, 60.0)
        self._rng = rng
        self.restarts = 0  # pollers restarted after a crash, over the relay's life (tests, metrics)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.pollers: dict[str, JobPoller] = {}
        #: Gap recovery and the test-only crash hook (see `JobPoller`), given to every poller started without
        #: its own (the relay builds them from its settings: relay/service.py).
        self.recovery = recovery
        self.on_drained = on_drained

    def __contains__(self, job: str) -> bool:
        return job in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def start(self, poller: JobPoller) -> bool:
        """Start `poller` unless its job already has one; False when it had."""
        job = poller.store.job
        if job in self._tasks:
            return False
        if len(self._tasks) >= self.limit:
            raise Busy(f"already polling {self.limit} jobs")
        if poller.recovery is None:
            poller.recovery = self.recovery
        if poller.on_drained is None:
            poller.on_drained = self.on_drained
        task = asyncio.create_task(self._run(poller), name=f"poll {job}")
        self._tasks[job] = task
        self.pollers[job] = poller
        return True

    async def _run(self, poller: JobPoller) -> None:
        """Run the job's poller; one that crashes is journaled and restarted after a backoff."""
        job = poller.store.job
        crashes = 0
        try:
            while True:
                try:
                    await poller.run()
                    return
                except asyncio.CancelledError:
                    raise
                except StopPolling as exc:
                    # Not a crash: this relay may no longer poll the job (cluster mode: another replica
                    # holds its lease, or this one's spool takes no files). A restart would be refused too.
                    log.warning("stopped polling job %s: %s", job, exc)
                    return
                except Exception as exc:
                    crashes += 1
                    delay = self.restart_delay(crashes)
                    log.exception(
                        "the poller of job %s crashed (%d time(s)); restarting it in %.1fs",
                        job,
                        crashes,
                        delay,
                    )
                    if poller.stopping or poller.store.closed:
                        return
                    await self._journal_crash(poller, exc, crashes, delay)
                    await asyncio.sleep(delay)
                    if poller.stopping or poller.store.closed:
                        return
                    poller = poller.fresh()
                    self.pollers[job] = poller
                    self.restarts += 1
        finally:
            self._tasks.pop(job, None)
            self.pollers.pop(job, None)

    def restart_delay(self, crashes: int) -> float:
        """Exponential, capped, with jitter in its upper half (never a tight loop, never in lockstep)."""
        ceiling = self.restart_backoff.delay(crashes, lambda: 1.0)
        return ceiling * (0.5 + 0.5 * self._rng())

    async def _journal_crash(self, poller: JobPoller, exc: Exception, crashes: int, delay: float) -> None:
        if crashes > MAX_JOURNALED_CRASHES:
            return  # a poller that keeps crashing is in the log; its journal says so already
        detail = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
        message = f"the relay's poller of this job crashed ({detail}); restarting it in {delay:.1f} s"
        if crashes == MAX_JOURNALED_CRASHES:
            message += " (further crashes are only logged)"
        try:
            await _finish_in_thread(poller._record_commit, [_error(None, "poller_crashed", message)])
        except Exception:
            log.exception("cannot journal the crash of the poller of job %s", poller.store.job)
            return
        poller.publish()

    async def wait(self, job: str) -> None:
        task = self._tasks.get(job)
        if task is not None:
            await asyncio.wait([task])

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop every poller: each finishes the long-poll it is in (up to `grace_s`), then they are cancelled.

        Letting the poll in flight finish matters: RunPod may hand items out to a request the relay has
        already abandoned, and those would be lost. `grace_s` should cover one `/stream` wait.
        """
        for poller in self.pollers.values():
            poller.stopping = True
        tasks = list(self._tasks.values())
        if tasks and grace_s > 0:
            await asyncio.wait(tasks, timeout=grace_s)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
