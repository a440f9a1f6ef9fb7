"""Starting the worker: on RunPod (the SDK's job loop) or once, locally, for one job.

`serve(model)` is the whole "bring your own model" API: hand it a `worker.model.Model` or a per-item
function, and it loads nothing more, builds the async-generator handler and runs RunPod's worker loop
(`return_aggregate_stream=False`: every file goes out through the stream, never in the final result).

`run_once(model, input, out)` iterates the same handler in-process and reassembles its envelopes into
files under `out` with `podstream.wire.Assembler`, verified like any consumer would; the SDK's own
`--test_input` never iterates a generator handler, so this is the way to try a job without RunPod.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podstream import sinks, wire
from podstream.jobspec import TASKS
from worker.handler import HandlerConfig, make_handler
from worker.model import Context, FunctionModel, GenerateFn, Model, Request, Result

if TYPE_CHECKING:
    from pydantic import BaseModel


class NotOnRunPod(RuntimeError):
    """`serve` was called where RunPod's job API is not configured (no RUNPOD_WEBHOOK_GET_JOB)."""


def as_model(
    model: Model | GenerateFn,
    tasks: Iterable[str] | None = None,
    *,
    input_model: type[BaseModel] | None = None,
    size_multiple: int = 8,
) -> Model:
    """A `Model` from a model or a per-item function; `input_model` declares the job input it takes."""
    if isinstance(model, Model):
        return model if input_model is None else DeclaredInput(model, input_model)
    if callable(model):
        return FunctionModel(model, tasks or TASKS, input_model=input_model, size_multiple=size_multiple)
    raise TypeError(f"serve() needs a Model or a function generate(request, ctx), got {type(model).__name__}")


class DeclaredInput:
    """A `Model` with an `input_model` given to `serve` rather than declared on its class."""

    def __init__(self, model: Model, input_model: type[BaseModel]) -> None:
        self.model = model
        self.tasks = model.tasks
        self.input_model = input_model

    def check(self, task: str, params: Any) -> None:
        check = getattr(self.model, "check", None)
        if check is not None:
            check(task, params)

    def generate(self, batch: Sequence[Request], ctx: Context) -> Sequence[Result | BaseException]:
        return self.model.generate(batch, ctx)

    def release(self) -> None:
        self.model.release()


def serve(
    model: Model | GenerateFn,
    *,
    tasks: Iterable[str] | None = None,
    input_model: type[BaseModel] | None = None,
    size_multiple: int = 8,
    config: HandlerConfig | None = None,
    environ: Mapping[str, str] = os.environ,
) -> None:
    """Run RunPod's worker loop with this model until the worker is stopped (blocks).

    `input_model` (a pydantic model) is the job input the model takes instead of the built-in job shape;
    `size_multiple` the rule a function model's width and height must meet (see docs/worker.md).

    Outside RunPod the SDK would run a `test_input.json` without ever iterating the generator; so without
    `RUNPOD_WEBHOOK_GET_JOB` this raises `NotOnRunPod` (use `run_once`, or point the worker at
    `podstream emulator`, which sets the variables).
    """
    if not environ.get("RUNPOD_WEBHOOK_GET_JOB"):
        raise NotOnRunPod(
            "RUNPOD_WEBHOOK_GET_JOB is not set, so this is not a RunPod worker: use `--once INPUT.json` to run "
            "one job locally, or run it against `podstream emulator`"
        )
    handler = make_handler(
        as_model(model, tasks, input_model=input_model, size_multiple=size_multiple), config
    )
    skip_cpuinfo_subprocess()
    import runpod  # reads the RUNPOD_WEBHOOK_* variables at import

    runpod.serverless.start({"handler": handler, "return_aggregate_stream": False})


def processor_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The processor's name as Linux reports it (`model name`), or None where there is no such file."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "model name" and value.strip():
            return value.strip()
    return None


def skip_cpuinfo_subprocess() -> None:
    """Spare each worker start a Python subprocess: when the runpod SDK is imported, its debug module asks
    py-cpuinfo for the processor's name, and py-cpuinfo answers by running a Python interpreter of its own
    (about 0.7 s of CPU on every cold start). The name only ever appears in the SDK's debug output, so it is
    read from /proc/cpuinfo instead. Call before the first `import runpod`; elsewhere (no /proc/cpuinfo,
    no py-cpuinfo, runpod already imported) nothing changes."""
    if "runpod" in sys.modules:
        return
    name = processor_name()
    if name is None:
        return
    try:
        import cpuinfo  # type: ignore[import-untyped]
    except ImportError:
        return
    cpuinfo.get_cpu_info = lambda: {"brand_raw": name}


@dataclass
class OnceReport:
    """What a local run produced: files by item, per-item errors, and any stream problem."""

    files: dict[int, Path] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    envelopes: int = 0
    largest_body: int = 0
    seeds: dict[int, int] = field(default_factory=dict)  # the seed of each file, from the manifest

    @property
    def ok(self) -> bool:
        return not self.errors and not self.problems


def read_job_input(source: str) -> Any:
    """A job input from a file (or `-`: stdin): either the input itself or `{"input": ...}` as sent to /run."""
    text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    data = json.loads(text)
    if isinstance(data, dict) and set(data) <= {"input", "policy", "webhook"} and "input" in data:
        return data["input"]
    return data


async def run_once_async(
    model: Model, job_input: Any, out: Path, *, job_id: str = "local", config: HandlerConfig | None = None
) -> OnceReport:
    handler = make_handler(model, config)
    assembler = wire.Assembler(job_id, sink=sinks.file_sinks(out, fsync=False))
    report = OnceReport()
    try:
        async for envelope in handler({"id": job_id, "input": job_input}):
            report.envelopes += 1
            report.largest_body = max(report.largest_body, wire.body_size(envelope))
            for event in assembler.feed(envelope):
                if isinstance(event, wire.ItemComplete):
                    report.files[event.item] = Path(event.result)
                elif isinstance(event, wire.ItemFailed):
                    report.errors[event.item] = f"{event.code}: {event.message}"
                elif isinstance(event, wire.ManifestReceived):
                    report.seeds = {
                        e["item"]: e["seed"] for e in event.items if isinstance(e.get("seed"), int)
                    }
                elif isinstance(event, wire.Problem):
                    report.problems.append(f"{event.code}: {event.message}")
        report.problems.extend(f"{p.code}: {p.message}" for p in assembler.finish())
    finally:
        assembler.close()
    manifest = {
        "job": job_id,
        "files": {str(i): p.name for i, p in sorted(report.files.items())},
        "errors": {str(i): e for i, e in sorted(report.errors.items())},
        "seeds": {str(i): s for i, s in sorted(report.seeds.items())},
        "problems": report.problems,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return report


def run_once(
    model: Model | GenerateFn,
    job_input: Any,
    out: Path,
    *,
    job_id: str = "local",
    tasks: Sequence[str] | None = None,
    input_model: type[BaseModel] | None = None,
) -> OnceReport:
    """Run one job in this process and write its files into `out` (created). Raises `JobInputError`."""
    out.mkdir(parents=True, exist_ok=True)
    model = as_model(model, tasks, input_model=input_model)
    return asyncio.run(run_once_async(model, job_input, out, job_id=job_id))
