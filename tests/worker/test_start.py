from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

import worker
from worker.model import Context, File, FunctionModel, Request, Result
from worker.start import DeclaredInput, NotOnRunPod, as_model, read_job_input


def generate(request: Request, ctx: Context) -> Result:
    ctx.step(1, 1)
    if request.prompt == "fail":
        raise RuntimeError("this one fails")
    return File(f"hello {request.prompt}".encode(), "text/plain")


def test_run_once_with_a_plain_function(tmp_path: Path) -> None:
    job = {"task": "text-to-image", "items": [{"prompt": "a", "id": "x/../../etc"}, {"prompt": "fail"}]}
    report = worker.run_once(generate, job, tmp_path / "out", job_id="job-1")
    assert not report.ok
    assert report.files[0].read_bytes() == b"hello a"
    assert report.files[0].parent == tmp_path / "out"  # client ids never become paths
    assert report.errors == {1: "generation_failed: RuntimeError: this one fails"}
    assert report.problems == [] and report.largest_body < 1_000_000
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["job"] == "job-1" and list(manifest["files"]) == ["0"]


def test_run_once_raises_for_a_malformed_job(tmp_path: Path) -> None:
    with pytest.raises(worker.JobInputError, match=r"input\.task"):
        worker.run_once(generate, {"items": [{"prompt": "a"}]}, tmp_path)


def test_serve_refuses_to_run_outside_runpod() -> None:
    with pytest.raises(NotOnRunPod, match="RUNPOD_WEBHOOK_GET_JOB is not set"):
        worker.serve(generate, environ={})


def test_as_model() -> None:
    model = as_model(generate, ["text-to-image"])
    assert model.tasks == {"text-to-image"}
    assert as_model(model) is model
    with pytest.raises(TypeError, match="needs a Model or a function"):
        as_model(42)  # type: ignore[arg-type]


def test_read_job_input_accepts_the_input_or_a_run_body(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"input": {"task": "text-to-image"}, "policy": {"ttl": 60000}}))
    assert read_job_input(str(path)) == {"task": "text-to-image"}
    path.write_text(json.dumps({"task": "text-to-image"}))
    assert read_job_input(str(path)) == {"task": "text-to-image"}


class Card(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    num_images: int = 1
    seed: int | None = None


def card(request: Request, ctx: Context) -> Result:
    assert isinstance(request.input, Card)
    return File(f"{request.input.prompt} #{request.output} seed {request.seed}".encode(), "text/plain")


def test_run_once_with_an_input_model(tmp_path: Path) -> None:
    report = worker.run_once(card, {"prompt": "hi", "num_images": 2, "seed": 3}, tmp_path, input_model=Card)
    assert report.ok and [p.read_bytes() for _, p in sorted(report.files.items())] == [
        b"hi #0 seed 3", b"hi #1 seed 4"
    ]  # fmt: skip
    assert report.seeds == {0: 3, 1: 4}
    assert json.loads((tmp_path / "manifest.json").read_text())["seeds"] == {"0": 3, "1": 4}
    with pytest.raises(worker.JobInputError, match=r"^input\.prompt: Field required$"):
        worker.run_once(card, {"num_images": 2}, tmp_path, input_model=Card)


def test_an_input_model_given_to_serve_for_a_model_object(tmp_path: Path) -> None:
    model = FunctionModel(card, tasks={"cards"})
    declared = as_model(model, input_model=Card)
    assert (
        isinstance(declared, DeclaredInput) and declared.input_model is Card and declared.tasks == {"cards"}
    )
    report = worker.run_once(declared, {"prompt": "yo"}, tmp_path)
    assert report.ok and report.files[0].read_bytes().startswith(b"yo #0 seed ")


def _import_runpod(skip: bool) -> tuple[str, float]:
    """Import the runpod SDK in a fresh interpreter; its processor name and its children's CPU seconds."""
    import subprocess
    import sys

    code = (
        "import resource\n"
        + ("from worker.start import skip_cpuinfo_subprocess; skip_cpuinfo_subprocess()\n" if skip else "")
        + "import runpod\n"
        "from runpod.serverless.utils import rp_debugger\n"
        "used = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(rp_debugger.PROCESSOR); print(used.ru_utime + used.ru_stime)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    name, children = done.stdout.splitlines()[-2:]
    return name, float(children)


def test_a_worker_imports_the_runpod_sdk_without_py_cpuinfos_subprocess() -> None:
    from worker.start import processor_name

    name, children = _import_runpod(skip=True)
    plain_name, plain_children = _import_runpod(skip=False)
    # py-cpuinfo's own interpreter (about a second of CPU here) is what a cold start no longer pays; what
    # is left is the SDK's other small probes
    assert children < 0.1 < 0.4 < plain_children, (children, plain_children)
    assert name == processor_name() == plain_name  # the SDK's debug output names the same processor


def test_processor_name_reads_linux_cpuinfo(tmp_path: Path) -> None:
    from worker.start import processor_name

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Example CPU @ 2.00GHz\n\n")
    assert processor_name(info) == "Example CPU @ 2.00GHz"
    info.write_text("processor\t: 0\nHardware\t: BCM2835\n")  # some ARM kernels name no model
    assert processor_name(info) is None
    assert processor_name(tmp_path / "missing") is None
