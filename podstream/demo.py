"""The whole system on one machine: `podstream demo`.

Starts on loopback, each as a child process: the RunPod job-API emulator (`podstream emulator`), which
supervises real worker processes (`python -m worker`: the runpod SDK's own loop, `tiny` diffusers
pipelines on CPU), and the relay (`podstream relay`) polling the emulator. It then submits sample batches
through the relay (image -> video from images drawn here, then text -> image), follows them over the
relay's websocket with live progress bars, saves every file (sha256-verified) to `<out>/<job>/`, prints
the demo page's URL, and ends with a summary: items, bytes, the largest RunPod message against the 1 MB
stream-chunk cap (measured by the emulator on the wire), and time to first file against the total.

The page URL is short and carries no key: the first job's id and a one-time link code
(`POST /v1/jobs/{id}/links`), which the page trades for a read-only token of that job. It is printed on a
line of its own, never wrapped, so it can be copied from any terminal. The relay's API key goes to
`<out>/api-key` (mode 0600), for the page's settings or `PODSTREAM_API_KEY`, and is never printed. With
`keep_running` (the CLI's default when stdin is a terminal) the stack stays up until Ctrl-C, and the page's
link is printed again with a new code (the first one may have been used: each works once).

`Stack` (the children) and `run_demo` are usable from Python and tests; every child runs in its own
session and is stopped (SIGTERM, then SIGKILL of its process group) when the stack exits, including on
Ctrl-C.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

import httpx

import podstream.submit as submit_mod
import podstream.watcher as watch_mod
from podstream.progress import JobOutcome, RichProgress, TransferError, display_path, human_bytes
from podstream.uploads import upload_inputs

if TYPE_CHECKING:
    from rich.console import Console

#: How long the printed page link can be traded for a token, and how long that token lives.
LINK_TTL_S: Final = 12 * 3600.0
#: RunPod's cap on one streamed chunk, and on a whole job result.
STREAM_CHUNK_CAP: Final = 1_000_000
RESULT_CAP: Final = 20_000_000
ENDPOINT_ID: Final = "demo"
_PALETTE: Final = [
    (230, 57, 70), (241, 250, 238), (168, 218, 220), (69, 123, 157), (29, 53, 87), (255, 183, 3),
    (251, 133, 0), (142, 202, 230), (33, 158, 188), (2, 48, 71), (106, 153, 78), (188, 71, 73),
]  # fmt: skip
PROMPTS: Final = (
    "a lighthouse on a cliff at dawn, oil painting",
    "a red fox in fresh snow, photograph",
    "a paper boat on a rainy street, watercolor",
    "a city of glass under two moons, concept art",
)


class DemoError(Exception):
    """The demo could not run: a child failed to start, a port was taken, ... (one line, with a log path)."""


@dataclass(frozen=True)
class DemoSettings:
    out: Path = Path("podstream-demo")
    workers: int = 1
    videos: int = 12
    images: int = 3
    frames: int = 8
    size: int = 128
    steps: int = 2
    fps: float = 7.0
    keep_running: bool = False
    host: str = "127.0.0.1"
    startup_timeout_s: float = 120.0
    #: The worker command the emulator supervises (PODSTREAM_MODEL=tiny is set for it).
    worker_cmd: str = field(default_factory=lambda: f"{shlex.quote(sys.executable)} -m worker")


# ---------------------------------------------------------------------------------------- sample inputs


def sample_image(index: int, size: int = 256) -> bytes:
    """A PNG drawn in code (no download): a two-colour gradient with a few shapes, different per index."""
    from PIL import Image, ImageDraw

    a = _PALETTE[index % len(_PALETTE)]
    b = _PALETTE[(index * 5 + 3) % len(_PALETTE)]
    image = Image.new("RGB", (size, size))
    pixels = image.load()
    assert pixels is not None
    for y in range(size):
        t = y / max(size - 1, 1)
        row = tuple(round(a[c] * (1 - t) + b[c] * t) for c in range(3))
        for x in range(size):
            pixels[x, y] = row
    draw = ImageDraw.Draw(image)
    for k in range(3):
        angle = (index * 0.9 + k * 2.1) % (2 * math.pi)
        cx = size / 2 + math.cos(angle) * size / 4
        cy = size / 2 + math.sin(angle) * size / 4
        r = size / (6 + 2 * k)
        colour = _PALETTE[(index + 4 * k + 1) % len(_PALETTE)]
        if k == 1:
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
        else:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_samples(directory: Path, count: int, size: int = 256) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        path = directory / f"sample-{k:02d}.png"
        path.write_bytes(sample_image(k, size))
        paths.append(path)
    return paths


# ------------------------------------------------------------------------------------------- children


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


class Child:
    """A child process in its own session, its output in a log file; `stop` ends it and its descendants."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("ab")
        self.process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,  # Ctrl-C in the terminal reaches us only; we stop children in order
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def tail(self, lines: int = 15) -> str:
        return _tail(self.log, lines)

    def stop(self, timeout: float = 10.0) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        # Whatever is left of its session (workers a dead supervisor did not stop) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def relay_command(python: str, env: dict[str, str]) -> list[str]:
    """`podstream relay ...`; in a checkout without that command yet, the same app under uvicorn."""
    import importlib.util

    if importlib.util.find_spec("podstream.commands.relay") is not None:
        return [
            python, "-m", "podstream", "relay", "--runpod-url", env["PODSTREAM_RUNPOD_URL"],
            "--data-dir", env["PODSTREAM_DATA_DIR"], "--host", env["PODSTREAM_HOST"], "--port", env["PODSTREAM_PORT"],
        ]  # fmt: skip
    code = (
        "import uvicorn\n"
        "from relay.api.app import create_app\n"
        "from relay.config import RelaySettings\n"
        "s = RelaySettings.from_env()\n"
        "uvicorn.run(create_app(s), host=s.host, port=s.port, ws='websockets', ws_per_message_deflate=False, "
        "log_level='warning')\n"
    )
    return [python, "-c", code]


class Stack:
    """The emulator (with its workers) and the relay, on loopback ports, as child processes."""

    def __init__(self, settings: DemoSettings, logs: Path, data_dir: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.data_dir = data_dir
        host = settings.host
        self.runpod_key = "rp-" + secrets.token_urlsafe(16)
        #: The relay's API key (auth is on by default: the relay is configured with its hash).
        from relay.api.auth import generate_key, hash_key

        self.relay_key: str | None = generate_key()
        self.emulator_port = free_port(host)
        self.relay_port = free_port(host)
        self.emulator_base = f"http://{host}:{self.emulator_port}"
        self.endpoint_url = f"{self.emulator_base}/v2/{ENDPOINT_ID}"
        self.relay_url = f"http://{host}:{self.relay_port}"
        python = sys.executable
        # The SDK logs every yield (base64 included) at DEBUG: keep the worker logs readable.
        env = {**os.environ, "PODSTREAM_MODEL": "tiny", "PYTHONUNBUFFERED": "1", "RUNPOD_DEBUG_LEVEL": "INFO"}
        # The worker fetches staged images from the relay, on loopback: allowed by name, nothing else is.
        env["PODSTREAM_INPUT_HOSTS"] = f"{host}:{self.relay_port}"
        self.emulator = Child(
            "emulator",
            [
                python, "-m", "podstream", "emulator", "--host", host, "--port", str(self.emulator_port),
                "--endpoint-id", ENDPOINT_ID, "--api-key", self.runpod_key,
                "--workers", str(settings.workers), "--worker-cmd", settings.worker_cmd,
                "--worker-log-dir", str(logs),
            ],
            logs / "emulator.log",
            env,
        )  # fmt: skip
        relay_env = {
            **os.environ, "PODSTREAM_RUNPOD_KEY": self.runpod_key, "PODSTREAM_RUNPOD_URL": self.endpoint_url,
            "PODSTREAM_DATA_DIR": str(data_dir), "PODSTREAM_HOST": host, "PODSTREAM_PORT": str(self.relay_port),
            "PYTHONUNBUFFERED": "1", "PODSTREAM_API_KEYS": hash_key(self.relay_key),
        }  # fmt: skip
        self.relay = Child("relay", relay_command(python, relay_env), logs / "relay.log", relay_env)
        self.children = [self.emulator, self.relay]

    def __enter__(self) -> Stack:
        try:
            for child in self.children:
                child.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        # The relay first (it polls the emulator), then the emulator, which stops its workers.
        for child in reversed(self.children):
            child.stop()

    def check_alive(self) -> None:
        for child in self.children:
            code = child.exited()
            if code is not None:
                raise DemoError(
                    f"the {child.name} exited with status {code} (log: {child.log})\n{child.tail()}".rstrip()
                )

    def wait_ready(self, on_wait: Callable[[str], None] | None = None) -> None:
        """Until the relay answers /healthz and the emulator has at least one worker ready for jobs."""
        deadline = time.monotonic() + self.settings.startup_timeout_s
        headers = {"Authorization": f"Bearer {self.runpod_key}"}
        relay_up = workers_up = False
        with httpx.Client(timeout=5.0) as http:
            while not (relay_up and workers_up):
                self.check_alive()
                if time.monotonic() > deadline:
                    waiting = "the relay" if not relay_up else "a worker"
                    logs = [self.relay.log] if not relay_up else self.worker_logs()
                    tail = _tail(logs[-1]) if logs else ""
                    raise DemoError(
                        f"{waiting} did not become ready within {self.settings.startup_timeout_s:.0f}s "
                        f"(logs in {self.logs})\n{tail}".rstrip()
                    )
                with contextlib.suppress(httpx.HTTPError):
                    relay_up = relay_up or http.get(f"{self.relay_url}/healthz").status_code == 200
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    health = http.get(f"{self.endpoint_url}/health", headers=headers).json()
                    workers = health.get("workers", {})
                    workers_up = workers.get("ready", 0) + workers.get("running", 0) > 0
                if on_wait is not None:
                    on_wait(
                        "starting the relay"
                        if not relay_up
                        else "starting the worker (tiny pipelines on CPU)"
                    )
                time.sleep(0.25)

    def emulator_stats(self) -> dict[str, Any]:
        try:
            body = httpx.get(f"{self.emulator_base}/_emulator/stats", timeout=5.0).json()
        except (httpx.HTTPError, ValueError):
            return {}
        return body if isinstance(body, dict) else {}

    def worker_logs(self) -> list[Path]:
        return sorted(p for p in self.logs.glob("*.log") if p.name not in ("emulator.log", "relay.log"))


# --------------------------------------------------------------------------------------------- the run


@dataclass
class JobRun:
    """One job of the demo: what was asked, what arrived, and when."""

    label: str
    task: str
    items: int
    job: str = ""
    token: str | None = None
    submitted_at: float = 0.0
    first_file_s: float | None = None
    total_s: float | None = None
    outcome: JobOutcome | None = None


@dataclass
class DemoSummary:
    runs: list[JobRun]
    stats: dict[str, Any]
    page_url: str
    out: Path
    #: Ended by Ctrl-C (or SIGTERM) while the stack was kept running: the CLI then exits 130.
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return all(r.outcome is not None and r.outcome.ok for r in self.runs)

    def largest(self, route: str, key: str) -> int:
        entry = self.stats.get("routes", {}).get(route, {})
        value = entry.get(key, 0)
        return value if isinstance(value, int) else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "out": str(self.out),
            "page_url": self.page_url,
            "largest_stream_post_bytes": self.largest("job-stream", "max_request_bytes"),
            "largest_stream_response_bytes": self.largest("stream", "max_response_bytes"),
            "jobs": [
                {
                    "label": r.label, "job": r.job, "task": r.task, "items": r.items,
                    "files": len(r.outcome.files) if r.outcome else 0,
                    "bytes": r.outcome.bytes if r.outcome else 0,
                    "status": r.outcome.status if r.outcome else None,
                    "first_file_s": r.first_file_s, "total_s": r.total_s,
                    "dir": str(self.out / r.job),
                }
                for r in self.runs
            ],
        }  # fmt: skip


def demo_inputs(
    settings: DemoSettings, samples: Sequence[Path | submit_mod.InputRef]
) -> list[tuple[JobRun, dict[str, Any]]]:
    jobs: list[tuple[JobRun, dict[str, Any]]] = []
    if settings.videos:
        video = submit_mod.build_input(
            images=samples[: settings.videos],
            seed=1,
            params={
                "frames": settings.frames, "width": settings.size, "height": settings.size,
                "steps": settings.steps, "fps": settings.fps,
            },
        )  # fmt: skip
        jobs.append((JobRun("image -> video", "image-to-video", settings.videos), video))
    if settings.images:
        prompts = [PROMPTS[k % len(PROMPTS)] for k in range(settings.images)]
        image = submit_mod.build_input(
            prompts=prompts,
            seed=7,
            params={"width": settings.size, "height": settings.size, "steps": settings.steps},
        )
        jobs.append((JobRun("text -> image", "text-to-image", settings.images), image))
    return jobs


def page_url(relay_url: str, job: str, code: str | None = None) -> str:
    """The relay's demo page opened on `job`: `#job=ID`, plus a link `code` when the relay has auth. In the
    fragment, so it is never sent to a server or logged."""
    params = {"job": job, "code": code}
    return f"{relay_url}/#" + urllib.parse.urlencode({k: v for k, v in params.items() if v})


def create_link(relay_url: str, key: str | None, job: str, ttl_s: float = LINK_TTL_S) -> str | None:
    """A one-time link code for `job` (`POST /v1/jobs/{id}/links` with the API key); None without a key."""
    if key is None:
        return None
    url = f"{relay_url}/v1/jobs/{urllib.parse.quote(job, safe='')}/links"
    try:
        answer = httpx.post(
            url, json={"ttl_s": ttl_s}, headers={"Authorization": f"Bearer {key}"}, timeout=10.0
        )
    except httpx.HTTPError as exc:
        raise DemoError(f"asking the relay for a link to job {job}: {exc}") from None
    if answer.status_code != 201:
        raise DemoError(
            f"asking the relay for a link to job {job}: HTTP {answer.status_code} {answer.text[:200]}"
        )
    code: str = answer.json()["code"]
    return code


def write_key(path: Path, key: str) -> None:
    """The API key in a file only its owner can read (never printed, never in a URL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    path.chmod(0o600)


def run_demo(settings: DemoSettings, console: Console) -> DemoSummary:
    """Run the demo to its end (and, with `keep_running`, until Ctrl-C). Raises `DemoError`."""
    from rich.table import Table

    out = settings.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    logs = out / "logs"
    samples = write_samples(out / "samples", max(settings.videos, 1))
    started = time.monotonic()
    console.rule("[bold]podstream demo")
    console.print(
        f"emulator (RunPod job API) + {settings.workers} worker(s) (runpod SDK loop, tiny pipelines on CPU) "
        f"+ relay, on {settings.host}; logs in {logs}"
    )
    with Stack(settings, logs, out / "relay-data") as stack:
        with console.status("starting…") as status:
            stack.wait_ready(lambda what: status.update(what + "…"))
        console.print(f"[green]ready[/] in {time.monotonic() - started:.1f}s: relay {stack.relay_url}, "
                      f"RunPod endpoint {stack.endpoint_url}")  # fmt: skip
        runs: list[JobRun] = []
        try:  # the images go to the relay first; the job only names them (RunPod caps a job at 10 MB)
            staged = upload_inputs(samples[: settings.videos], relay=stack.relay_url, key=stack.relay_key)
        except (TransferError, submit_mod.InputError) as exc:
            stack.check_alive()
            raise DemoError(f"staging the sample images: {exc} (log: {stack.relay.log})") from None
        for run, job_input in demo_inputs(settings, staged):
            try:
                job = submit_mod.submit(job_input, relay=stack.relay_url, key=stack.relay_key)
            except TransferError as exc:
                stack.check_alive()
                raise DemoError(f"submitting the {run.label} job: {exc} (log: {stack.relay.log})") from None
            run.job, run.token, run.submitted_at = job.id, job.token, time.monotonic()
            runs.append(run)
            console.print(f"submitted [bold]{run.label}[/] job {job.id} ({run.items} items)")
        first_page = (
            page_url(stack.relay_url, runs[0].job, create_link(stack.relay_url, stack.relay_key, runs[0].job))
            if runs
            else stack.relay_url
        )
        key_file = out / "api-key"
        if stack.relay_key is not None:
            write_key(key_file, stack.relay_key)
        console.print(f"watch {runs[0].label if runs else 'it'} in a browser (a one-time link):")
        _print_url(console, first_page)
        for run in runs:
            console.rule(f"{run.label}: job {run.job}")
            display = RichProgress(
                total=run.items, console=console, title=run.label, started=run.submitted_at
            )
            files = watch_mod.watch(
                run.job,
                relay=stack.relay_url,
                out=out / run.job,
                token=run.token,
                key=stack.relay_key,
                observer=display,
                check=False,
            )
            try:
                with display:
                    for _ in files:
                        pass
            except TransferError as exc:
                stack.check_alive()
                raise DemoError(f"watching job {run.job}: {exc} (logs in {logs})") from None
            run.outcome = display.outcome
            run.first_file_s = display.first_file_after
            run.total_s = time.monotonic() - run.submitted_at
        summary = DemoSummary(runs, stack.emulator_stats(), first_page, out)
        _print_summary(console, summary, Table)
        if settings.keep_running:
            # A link code works once, and the first link may have been opened already: a fresh one.
            again = (
                page_url(
                    stack.relay_url, runs[0].job, create_link(stack.relay_url, stack.relay_key, runs[0].job)
                )
                if runs
                else stack.relay_url
            )
            console.print("\nthe stack keeps running; the demo page (a new one-time link):")
            _print_url(console, again)
            console.print(
                f"relay {stack.relay_url}  emulator {stack.endpoint_url} (key {stack.runpod_key})",
                soft_wrap=True,
            )
            if stack.relay_key is not None:
                console.print(
                    f"to submit from the page or the CLI, use the relay's API key: "
                    f"export PODSTREAM_API_KEY=$(cat {display_path(key_file)})",
                    soft_wrap=True,
                    highlight=False,
                )
            console.print("press Ctrl-C to stop every process")
            try:
                while True:
                    stack.check_alive()
                    time.sleep(0.5)
            except KeyboardInterrupt:
                summary.interrupted = True
            console.print("stopping…")
    return summary


def _print_url(console: Console, url: str) -> None:
    """`url` on a line of its own, whole: never wrapped or cropped at the terminal's width, so it copies."""
    console.print(url, style="bold underline", soft_wrap=True, highlight=False, markup=False)


def _print_summary(console: Console, summary: DemoSummary, table_cls: Any) -> None:
    table = table_cls(title="summary", title_justify="left")
    for name in ("", "files", "bytes", "first file", "all files"):
        table.add_column(name, justify="right" if name else "left")
    for run in summary.runs:
        outcome = run.outcome
        table.add_row(
            run.label,
            f"{len(outcome.files)}/{run.items}" if outcome else "-",
            human_bytes(outcome.bytes) if outcome else "-",
            f"{run.first_file_s:.1f}s" if run.first_file_s is not None else "-",
            f"{run.total_s:.1f}s" if run.total_s is not None else "-",
        )
    console.print(table)
    console.print(
        "[dim]times count from each job's submission; the jobs share the worker(s), so the second waits[/]"
    )
    for run in summary.runs:
        console.print(
            f"{run.label}: job {run.job} -> {display_path(summary.out / run.job)}/", highlight=False
        )
    largest_post = summary.largest("job-stream", "max_request_bytes")
    largest_poll = summary.largest("stream", "max_response_bytes")
    total = sum(r.outcome.bytes for r in summary.runs if r.outcome)
    as_one = math.ceil(total / 3) * 4  # the whole batch as one base64 result
    console.print(
        f"largest RunPod message: {human_bytes(largest_post)} worker -> RunPod "
        f"(cap 1 MB = {STREAM_CHUNK_CAP:,} bytes per stream chunk, {largest_post / STREAM_CHUNK_CAP:.0%} of it); "
        f"largest /stream answer {human_bytes(largest_poll)}"
    )
    console.print(
        f"as one job result these files would be {human_bytes(as_one)} of base64 "
        f"(RunPod's cap: 20 MB = {RESULT_CAP:,} bytes); streamed, no message comes near a cap at any batch size"
    )
    for run in summary.runs:
        if run.outcome is not None and not run.outcome.ok:
            console.print(f"[red]{run.outcome.summary()}[/]")
    console.print(
        "[green]every file saved and verified[/]" if summary.ok else "[red]some files are missing[/]"
    )


def summary_json(summary: DemoSummary) -> str:
    return json.dumps(summary.as_dict(), indent=2)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (e.g. from a supervisor) ends the demo like Ctrl-C: children are stopped cleanly."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
