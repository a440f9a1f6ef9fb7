"""What a transfer (pull, watch, submit, demo) reports while it runs, and how the CLI shows it.

Every transfer takes an `Observer` and calls it as the job goes: status changes, an item's generation
steps, bytes of an item arriving, an item saved (`SavedFile`, verified), an item failed on the worker
(`ItemFailure`), a problem with the stream itself (gap, corruption, ...), reconnects, and the end
(`JobOutcome`). `Observer` does nothing; `RichProgress` draws live progress bars in a terminal with
`rich` (imported only when a `RichProgress` is made, so `import podstream` stays light).

A transfer whose job did not end COMPLETED with every item saved raises `JobIncomplete` at its end, after
every file that did arrive was saved and yielded: nothing is lost silently, and nothing already saved is
thrown away.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

from podstream import problems

if TYPE_CHECKING:
    from rich.console import Console
    from rich.live import Live
    from rich.progress import Progress, TaskID


def cli_console(*, stderr: bool = True) -> Console:
    """The `rich` console the CLI writes through. On a terminal, rich wraps at its width; into a pipe or a
    file (CI, `| tee`, `2> log`) nothing is wrapped, since rich would otherwise break every line at 80
    columns and a path or a URL would come out in pieces."""
    from rich.console import Console

    out = Console(stderr=stderr)
    if not out.is_terminal:
        out.soft_wrap = True  # each print is one line, as long as it is
    return out


#: The record codes (docs/protocol.md) that the summary line reports for the whole job rather than the
#: progress display line by line: an item that never came, and the manifest that never came.
MISSING_ITEM: Final = "missing_item"
MISSING_MANIFEST: Final = "missing_manifest"
#: RunPod's final statuses other than COMPLETED, and the relay's LOST (it could not follow the job).
ENDED_EARLY: Final = frozenset({"CANCELLED", "FAILED", "TIMED_OUT", "LOST"})


@dataclass(frozen=True)
class SavedFile:
    """One item of a job, complete on disk under `path`, its size and sha256 verified."""

    item: int
    id: str
    mime: str
    size: int
    sha256: str
    path: Path


@dataclass(frozen=True)
class ItemFailure:
    """The worker reported that one item failed (the rest of the batch went on)."""

    item: int
    id: str
    code: str
    message: str


@dataclass(frozen=True)
class StreamProblem:
    """Something wrong with the stream itself: a gap, a corrupt part, a manifest mismatch, ..."""

    code: str
    message: str


@dataclass
class JobOutcome:
    """How a job ended, as seen by one consumer."""

    job: str
    status: str = "UNKNOWN"
    error: str | None = None  # the job-level error RunPod or the relay reported (FAILED jobs)
    files: list[SavedFile] = field(default_factory=list)
    failures: list[ItemFailure] = field(default_factory=list)
    problems: list[StreamProblem] = field(default_factory=list)
    expected_items: int | None = None  # from the manifest / done record, when it arrived
    result: Path | None = None  # result.json of a wrapped handler (podstream.results), if it sent one

    @property
    def ok(self) -> bool:
        return self.status == "COMPLETED" and not self.failures and not self.problems

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def never_sent(self) -> list[int]:
        """The items that never came at all (`missing_item`: the worker did not send them)."""
        saved = {f.item for f in self.files}
        return sorted({f.item for f in self.failures if f.code == MISSING_ITEM} - saved)

    @property
    def ended_early(self) -> bool:
        """The job stopped before it completed (cancelled, failed, timed out, lost)."""
        return self.status in ENDED_EARLY

    def summary(self) -> str:
        """One line: what arrived and what went wrong. Items that never came are one range
        (`never sent: items 0-29`), not a line each; `outcome_dict` keeps each one's record."""
        never = self.never_sent
        if self.ended_early:
            # The job's end explains the items it never made and the manifest it never sent.
            parts = [
                f"job {self.job}: "
                + problems.job_ended(self.status, len(self.files), self.expected_items, never)
            ]
            if self.files:
                parts.append(f"{human_bytes(self.bytes)} saved")
            shown = [p for p in self.problems if p.code != MISSING_MANIFEST]
        else:
            parts = [
                f"job {self.job} {self.status}",
                f"{len(self.files)} file(s) saved ({human_bytes(self.bytes)})",
            ]
            if never:
                parts.append(f"never arrived: {problems.item_ranges(never)}")
            shown = list(self.problems)
        failed = {f.item for f in self.failures} - set(never)
        if failed:
            parts.append(f"{len(failed)} item(s) failed")
        drained = [p for p in shown if p.code == problems.Code.STREAM_DRAINED]
        if drained:
            parts.append(drained[0].message)  # the only problem there is: nothing came
        elif shown:
            codes = sorted({p.code for p in shown})
            parts.append(f"{len(shown)} stream problem(s): {', '.join(codes)}")
        if self.result is not None:
            parts.append(f"result in {display_path(self.result)}")
        if self.error:
            parts.append(f"error: {readable(self.error)}")
        return "; ".join(parts)


class TransferError(Exception):
    """A transfer could not go on: unreachable server, rejected key, unknown job, retries exhausted."""


class JobIncomplete(Exception):
    """The job ended, but not every item arrived whole (or the job itself failed). See `outcome`."""

    def __init__(self, outcome: JobOutcome) -> None:
        super().__init__(outcome.summary())
        self.outcome = outcome


def outcome_dict(outcome: JobOutcome) -> dict[str, Any]:
    """The outcome as plain JSON-able data (for `--json`)."""
    return {
        "job": outcome.job,
        "status": outcome.status,
        "ok": outcome.ok,
        "error": outcome.error,
        "expected_items": outcome.expected_items,
        "bytes": outcome.bytes,
        "files": [{**asdict(f), "path": str(f.path)} for f in outcome.files],
        "failures": [asdict(f) for f in outcome.failures],
        "problems": [asdict(p) for p in outcome.problems],
        "result": str(outcome.result) if outcome.result is not None else None,
        "never_sent": outcome.never_sent,
        "summary": outcome.summary(),
    }


def display_path(path: Path) -> str:
    """`path` relative to the working directory when it is under it (shorter lines), else as is."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except (ValueError, OSError):
        return str(path)


def failure_text(failure: ItemFailure) -> str:
    """`item 3 (cat): bad_image: ...`: the item's number, its id when known, what went wrong."""
    label = f"item {failure.item}" + (f" ({failure.id})" if failure.id else "")
    message = readable(failure.message)
    return f"{label}: {failure.code}: {message}" if message else f"{label}: {failure.code}"


def human_bytes(n: float) -> str:
    """A byte count as the demo page writes it, so the CLI and the page say the same for the same file:
    binary multiples labelled KB and MB (1 KB = 1024 bytes; 37,920 bytes is `37.0 KB`), one decimal,
    rounded half up like JavaScript's `toFixed` (client_js/demo/demo.js `formatBytes`; a test runs both)."""
    if n < 1024:
        return f"{n:.0f} B"
    value, unit = (n / 1024, "KB") if n < 1024 * 1024 else (n / 1024 / 1024, "MB")
    # Decimal(float) is the float's exact value: rounding it half up is what toFixed does (format() would
    # round half to even: 1280 bytes would be 1.2 KB here and 1.3 KB on the page).
    return f"{Decimal(value).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)} {unit}"


def readable(text: str) -> str:
    """`text` without Python object reprs (`<_io.BytesIO object at 0x7f...>` becomes `a BytesIO`): messages
    from workers and servers are shown to people."""
    return _REPR.sub(lambda m: f"a {m.group(1).rsplit('.', 1)[-1]}", text)


_REPR = re.compile(r"<([A-Za-z_][\w.]*) object at 0x[0-9a-fA-F]+>")


class Observer:
    """Receives a transfer's events. Every method does nothing; override the ones you need.

    Methods are called from the thread (or event loop) running the transfer, in stream order. After the
    end, `outcome` holds the job's `JobOutcome` (subclasses overriding `finished` call `super().finished`).
    """

    outcome: JobOutcome | None = None
    last_seq: int = 0

    def status(self, status: str) -> None:
        pass

    def item_started(self, item: int, id: str, mime: str, size: int) -> None:
        """The first bytes of an item are about to arrive."""

    def item_bytes(self, item: int, received: int, size: int) -> None:
        """`received` bytes of the item's `size` have arrived so far."""

    def item_progress(self, item: int, step: int, steps: int) -> None:
        """The worker is generating the item: step `step` of `steps`."""

    def item_saved(self, file: SavedFile) -> None:
        pass

    def item_failed(self, failure: ItemFailure) -> None:
        pass

    def problem(self, problem: StreamProblem) -> None:
        pass

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        """The connection dropped or a request failed; the next try comes after `delay` seconds."""

    def position(self, seq: int) -> None:
        """Every record up to `seq` was applied: a later watch can resume with `from_seq=seq` (watch only).

        Kept in `last_seq` (subclasses overriding this call `super().position`)."""
        self.last_seq = seq

    def finished(self, outcome: JobOutcome) -> None:
        self.outcome = outcome


class RichProgress(Observer):
    """Live progress bars: one per item in flight (generation steps, then bytes) and one overall.

    Use as a context manager around the transfer. Finished items leave their bar and print one line, so a
    batch of a thousand items keeps a screen of bars. `total` is the number of items when known up front.
    """

    def __init__(
        self,
        *,
        total: int | None = None,
        console: Console | None = None,
        title: str = "items",
        max_bars: int = 12,
        started: float | None = None,
        verbose: bool = False,
    ) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console or cli_console()
        self.max_bars = max_bars
        self.verbose = verbose
        self._overall = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            console=self.console,
        )
        self._items: Progress = Progress(
            TextColumn("  {task.description}", style="cyan"),
            BarColumn(bar_width=30),
            TaskProgressColumn(),
            TextColumn("{task.fields[detail]}"),
            console=self.console,
        )
        self._total_task = self._overall.add_task(title, total=total, detail="waiting for the job")
        self._tasks: dict[int, TaskID] = {}
        self._names: dict[int, str] = {}
        self._live: Live | None = None
        self._saved = 0
        self._failed = 0
        self._bytes_saved = 0
        self._status = ""
        #: `time.monotonic()` the transfer counts from (default: now); `first_file_after` is measured from it.
        self._started = time.monotonic() if started is None else started
        self.first_file_after: float | None = None

    def __enter__(self) -> RichProgress:
        from rich.console import Group
        from rich.live import Live

        if not self.console.is_terminal:
            # Live redraws need a terminal; in a log or a pipe its last frame ends without a newline and
            # the next line runs into it. There, only the lines (saved, failed, ...) and a last summary.
            return self
        self._live = Live(Group(self._overall, self._items), console=self.console, refresh_per_second=8)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None
        elif not self.console.is_terminal:
            self.console.print(self._overall)  # the overall bar once, as a whole line

    def set_total(self, total: int | None) -> None:
        self._overall.update(self._total_task, total=total)

    # ---- Observer

    def status(self, status: str) -> None:
        self._status = status
        self._refresh_overall()

    def _task(self, item: int, label: str | None = None) -> TaskID | None:
        task = self._tasks.get(item)
        if task is None:
            if len(self._tasks) >= self.max_bars:
                return None
            name = label or self._names.get(item) or f"#{item}"
            task = self._items.add_task(name, total=None, detail="")
            self._tasks[item] = task
        return task

    def item_progress(self, item: int, step: int, steps: int) -> None:
        task = self._task(item)
        if task is not None:
            self._items.update(task, total=steps, completed=step, detail=f"generating {step}/{steps}")

    def item_started(self, item: int, id: str, mime: str, size: int) -> None:
        self._names[item] = f"#{item} {id}"[:32] if id else f"#{item}"
        task = self._task(item, self._names[item])
        if task is not None:
            self._items.update(
                task, description=self._names[item], total=max(size, 1), completed=0, detail=mime
            )

    def item_bytes(self, item: int, received: int, size: int) -> None:
        task = self._tasks.get(item)
        if task is not None:
            self._items.update(
                task,
                total=max(size, 1),
                completed=received,
                detail=f"{human_bytes(received)}/{human_bytes(size)}",
            )

    def _drop(self, item: int) -> None:
        task = self._tasks.pop(item, None)
        if task is not None:
            self._items.remove_task(task)

    def item_saved(self, file: SavedFile) -> None:
        if self.first_file_after is None:
            self.first_file_after = time.monotonic() - self._started
        self._drop(file.item)
        self._saved += 1
        self._bytes_saved += file.size
        self.console.print(
            f"[green]saved[/] {_escape(display_path(file.path))}  [dim]{human_bytes(file.size)} {file.mime}[/]",
            highlight=False,
        )
        self._overall.advance(self._total_task)
        self._refresh_overall()

    def item_failed(self, failure: ItemFailure) -> None:
        self._drop(failure.item)
        self._failed += 1
        if self.verbose or not summarised(failure.code):
            self.console.print(f"[red]failed[/] {_escape(failure_text(failure))}", highlight=False)
        self._overall.advance(self._total_task)
        self._refresh_overall()

    def problem(self, problem: StreamProblem) -> None:
        if self.verbose or not summarised(problem.code):
            self.console.print(f"[bold red]problem[/] {problem.code}: {_escape(readable(problem.message))}")

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        self.console.print(f"[yellow]retrying[/] in {delay:.1f}s (attempt {attempt}): {_escape(reason)}")

    def finished(self, outcome: JobOutcome) -> None:
        super().finished(outcome)
        if outcome.expected_items is not None:
            self.set_total(outcome.expected_items)
        self._status = outcome.status
        self._refresh_overall()
        for item in list(self._tasks):
            self._drop(item)

    def _refresh_overall(self) -> None:
        detail = f"{self._status}  {human_bytes(self._bytes_saved)}"
        if self._failed:
            detail += f"  [red]{self._failed} failed[/]"
        self._overall.update(self._total_task, detail=detail)


def _escape(text: str) -> str:
    """Text shown through rich: `[...]` in a message (`items[0]`, `[Errno 111]`) is text, not markup."""
    from rich.markup import escape

    return escape(text)


@dataclass(frozen=True)
class UploadProgress:
    """Where a batch stands, given to `upload_inputs(progress=...)` after every chunk sent and file done.

    Counts are of distinct files (an identical file twice is one). `bytes` is what there is to send: it
    shrinks by a file's size when the relay turns out to hold it (`skipped`). `bytes_done` goes back by
    what a failed try had sent, when it is retried."""

    files: int
    files_done: int
    skipped: int
    bytes: int
    bytes_done: int


class UploadBar:
    """One byte bar for a batch of input uploads (`upload_inputs(progress=bar)`), on stderr.

    Use as a context manager around the uploads. Without a terminal (a log, a pipe), no bar: one line at
    the end says what was sent and what the relay already held."""

    def __init__(self, *, console: Console | None = None, title: str = "uploading") -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = console or cli_console()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._task = self._progress.add_task(title, total=None, detail="")
        self.last: UploadProgress | None = None

    def __enter__(self) -> UploadBar:
        if self.console.is_terminal:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.console.is_terminal:
            self._progress.stop()
        elif self.last is not None and self.last.files and exc[0] is None:
            self.console.print(upload_summary(self.last), highlight=False)

    def __call__(self, state: UploadProgress) -> None:
        self.last = state
        detail = f"{human_bytes(state.bytes_done)}/{human_bytes(state.bytes)}"
        detail += f"  {state.files_done}/{state.files} files"
        if state.skipped:
            detail += f", {state.skipped} already on the relay"
        self._progress.update(
            self._task, total=max(state.bytes, 1), completed=state.bytes_done, detail=detail
        )


def upload_summary(state: UploadProgress) -> str:
    """`uploaded 3 image(s) (1.2 MB); 2 already on the relay`."""
    sent = state.files - state.skipped
    line = f"uploaded {sent} image(s)"
    if sent:
        line += f" ({human_bytes(state.bytes_done)})"
    if state.skipped:
        line += f"; {state.skipped} already on the relay"
    return line


class LineProgress(Observer):
    """One plain line per saved or failed item, problem and retry: for logs and terminals without bars."""

    def __init__(self, stream: TextIO | None = None, *, verbose: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def item_saved(self, file: SavedFile) -> None:
        self._say(f"saved {display_path(file.path)} ({human_bytes(file.size)} {file.mime})")

    def item_failed(self, failure: ItemFailure) -> None:
        if self.verbose or not summarised(failure.code):
            self._say(f"failed {failure_text(failure)}")

    def problem(self, problem: StreamProblem) -> None:
        if self.verbose or not summarised(problem.code):
            self._say(f"problem {problem.code}: {readable(problem.message)}")

    def reconnecting(self, attempt: int, delay: float, reason: str) -> None:
        self._say(f"retrying in {delay:.1f}s (attempt {attempt}): {reason}")


def terminal_observer(
    *, quiet: bool = False, total: int | None = None, title: str = "items", verbose: bool = False
) -> Observer:
    """What the CLI shows: live bars on a terminal, plain lines otherwise, nothing with `quiet`.
    `verbose`: also a line for each item that never came (else the summary line gives them as ranges)."""
    if quiet:
        return Observer()
    if sys.stderr.isatty():
        return RichProgress(total=total, title=title, verbose=verbose)
    return LineProgress(verbose=verbose)


def summarised(code: str) -> bool:
    """Whether the summary line reports this record code for the whole job (`never sent: items 0-29`),
    so that the progress display need not give it a line per item: thirty `missing_item` lines of a
    cancelled job say less than one range, and a drained stream is the whole story."""
    return code in (MISSING_ITEM, MISSING_MANIFEST, problems.Code.STREAM_DRAINED)


def consume(files: Iterator[SavedFile], observer: Observer) -> JobOutcome:
    """Run a transfer to its end under `observer` (live bars while it runs, for a `RichProgress`).

    The transfer must have been made with this observer and `check=False`; returns its outcome.
    """
    if isinstance(observer, RichProgress):
        with observer:
            for _ in files:
                pass
    else:
        for _ in files:
            pass
    if observer.outcome is None:
        raise TransferError("the transfer ended without an outcome")
    return observer.outcome
