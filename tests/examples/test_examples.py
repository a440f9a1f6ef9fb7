"""examples/: the seeds' handlers as they were fail at RunPod's caps; ported with `podstream.wrap` (a few
lines changed), every file arrives through the emulator and `podstream pull`, with the result in place; and
through a relay, with the one setting docs/worker.md gives for a handler's own input."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import re
import sys
from pathlib import Path
from typing import Any

import av
import pytest
from PIL import Image

from podstream import wire
from tests.examples.support import (
    EXAMPLES,
    changed_lines,
    example_worker,
    noise_png_base64,
    pull,
    relay_in_front,
    run_until_done_is_refused,
    submit,
    worker_log,
)


def load_example(path: Path) -> Any:
    """An example's module, imported from its file (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the module's annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("example", ["batch_images", "batch_videos"])
def test_each_port_changes_at_most_five_lines(example: str) -> None:
    changed = changed_lines(EXAMPLES / example / "original.py", EXAMPLES / example / "handler.py")
    assert 0 < len(changed) <= 5, changed
    assert any("podstream.wrap(handler)" in line for line in changed)


def shipped_job(example: str) -> Any:
    """The job input an example ships beside it (`examples/<example>/job.json`, as examples/README.md runs it)."""
    return json.loads((EXAMPLES / example / "job.json").read_text())["input"]


IMAGES_JOB = shipped_job("batch_images")  # six 1024x1024 images: over the cap as one result


def expected_pngs() -> list[bytes]:
    job = {"input": IMAGES_JOB}
    original = load_example(EXAMPLES / "batch_images" / "original.py")
    return [base64.b64decode(b) for b in original.handler(job)["images"]]


def test_the_original_images_handler_loses_its_result_at_the_cap(tmp_path: Path) -> None:
    with example_worker(EXAMPLES / "batch_images" / "original.py", tmp_path) as emu:
        status = run_until_done_is_refused(emu, IMAGES_JOB)
        stats = emu.stats()
    assert stats["routes"]["job-done"]["max_request_bytes"] > 20_000_000  # six 1024x1024 PNGs in one body
    assert status["status"] == "IN_PROGRESS" and "output" not in status  # the result never arrives
    assert "Failed to return job results" in worker_log(tmp_path, "Failed to return job results")


def test_the_ported_images_handler_streams_every_image_and_its_result(tmp_path: Path) -> None:
    with example_worker(EXAMPLES / "batch_images" / "handler.py", tmp_path) as emu:
        done, out = pull(emu, IMAGES_JOB, tmp_path / "out")
        stats = emu.stats()
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "COMPLETED" and outcome["ok"] and len(outcome["files"]) == 6
    assert stats["routes"]["job-stream"]["max_request_bytes"] <= wire.DEFAULT_BODY_BUDGET
    result = json.loads((out / "result.json").read_text())
    assert outcome["result"] == str(out / "result.json")
    assert result["count"] == 6 and result["prompt"] == IMAGES_JOB["prompt"]
    assert [(out / p).read_bytes() for p in result["images"]] == expected_pngs()
    assert Image.open(out / result["images"][0]).size == (1024, 1024)


def test_the_ported_images_handler_behind_a_relay(tmp_path: Path) -> None:
    """A relay left on its default (the built-in worker's input schema) refuses the handler's own input,
    saying what to change, on the CLI's side and on the relay's; with that change made (`--input-schema
    off`, as docs/worker.md says), every image and the result arrive through the relay."""
    job = {"prompt": "a lighthouse at dusk", "num_images": 2, "width": 128, "height": 96, "seed": 7}
    with example_worker(EXAMPLES / "batch_images" / "handler.py", tmp_path) as emu:
        with relay_in_front(emu, tmp_path / "default") as relay:
            local = submit(relay, job, tmp_path / "out")
            remote = submit(relay, job, tmp_path / "out", "--input-schema", "off")
        with relay_in_front(emu, tmp_path / "off", "--input-schema", "off") as relay:
            done = submit(relay, job, tmp_path / "out", "--input-schema", "off", "--json")
        runs = emu.stats()["routes"]["run"]["requests"]
    [line] = local.stderr.splitlines()
    assert local.returncode == 2 and line.startswith(
        "podstream submit: the job input is not valid: (the input)"
    )
    assert "podstream.wrap" in line and "--input-schema off" in line and "relay" in line
    [line] = remote.stderr.splitlines()
    assert remote.returncode == 1 and "the relay refused the job (HTTP 400)" in line
    assert "start the relay with --input-schema off" in line
    assert runs == 1  # neither refusal reached RunPod
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "COMPLETED" and outcome["ok"] and len(outcome["files"]) == 2
    result_path = Path(outcome["result"])
    result = json.loads(result_path.read_text())
    assert result["count"] == 2 and result["prompt"] == job["prompt"]
    for name in result["images"]:
        assert Image.open(result_path.parent / name).size == (128, 96)


def test_a_handler_file_named_worker_py(tmp_path: Path) -> None:
    """`import worker` in a file named worker.py imports that file; `import podstream` finds podstream's."""
    script = tmp_path / "worker.py"
    script.write_text((EXAMPLES / "batch_images" / "handler.py").read_text())
    job = {"prompt": "a kite", "num_images": 2, "width": 64, "height": 64}
    with example_worker(script, tmp_path) as emu:
        done, out = pull(emu, job, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["count"] == 2 and all((out / p).stat().st_size > 0 for p in result["images"])


def clips_job(count: int) -> dict[str, object]:
    images = [{"id": f"photo-{i}", "image_base64": noise_png_base64(128, 128, i)} for i in range(count)]
    return {"images": images, "frames": 6, "size": 128}  # ~220 KB of lossless noise per clip


def test_the_original_videos_handler_loses_100_clips_at_the_cap(tmp_path: Path) -> None:
    with example_worker(EXAMPLES / "batch_videos" / "original.py", tmp_path) as emu:
        status = run_until_done_is_refused(emu, clips_job(100))
        stats = emu.stats()
    assert stats["routes"]["job-done"]["max_request_bytes"] > 20_000_000
    assert status["status"] == "IN_PROGRESS" and "output" not in status
    assert "Failed to return job results" in worker_log(tmp_path, "Failed to return job results")


def test_the_ported_videos_handler_delivers_100_clips_under_1_mb_per_message(tmp_path: Path) -> None:
    with example_worker(EXAMPLES / "batch_videos" / "handler.py", tmp_path) as emu:
        done, out = pull(emu, clips_job(100), tmp_path / "out")
        stats = emu.stats()
    assert done.returncode == 0, done.stderr
    routes = stats["routes"]
    assert routes["job-stream"]["max_request_bytes"] <= wire.DEFAULT_BODY_BUDGET  # every message
    assert routes["job-stream"]["statuses"] == {"200": routes["job-stream"]["requests"]}  # none refused
    assert routes["job-done"]["max_request_bytes"] < 1000
    assert routes["job-stream"]["request_bytes"] > 20_000_000  # what used to be one body over the cap
    result = json.loads((out / "result.json").read_text())
    assert result["count"] == 100 and len(result["videos"]) == 100
    for i, video in enumerate(result["videos"]):
        assert video["id"] == f"photo-{i}"
        with av.open(io.BytesIO((out / video["video_base64"]).read_bytes()), mode="r") as clip:
            frames = list(clip.decode(video=0))
        assert len(frames) == 6 and (frames[0].width, frames[0].height) == (128, 128)


def test_a_custom_input_model_through_the_emulator_and_pull(tmp_path: Path) -> None:
    example = load_example(EXAMPLES / "custom_input" / "sketch.py")
    job = {"prompt": "a red kite", "num_images": 3, "palette": "cool", "width": 48, "height": 32, "seed": 5}
    with example_worker(EXAMPLES / "custom_input" / "sketch.py", tmp_path) as emu:
        done, out = pull(emu, job, tmp_path / "out")
        refused, _ = pull(emu, {**job, "width": 1001}, tmp_path / "bad")
    assert done.returncode == 0, done.stderr
    files = sorted(json.loads(done.stdout)["files"], key=lambda f: f["item"])
    assert [f["mime"] for f in files] == ["image/png"] * 3 and all(
        Path(f["path"]).parent == out for f in files
    )
    sketch = example.Sketch.model_validate(job)
    for k, file in enumerate(files):  # output k was drawn with seed 5 + k
        assert (Image.open(file["path"]).convert("RGB").tobytes()) == Image.fromarray(
            example.draw(sketch, 5 + k)
        ).convert("RGB").tobytes()
    assert refused.returncode == 1
    assert (
        "input.width: must be a multiple of 8 for this model, got 1001" in json.loads(refused.stdout)["error"]
    )


def test_the_readme_runs_only_files_that_ship() -> None:
    """Every file examples/README.md hands a command (`--submit`, `--input`, a handler) is in the repository."""
    readme = (EXAMPLES / "README.md").read_text()
    named = re.findall(r"(?:--submit|--input|python) (examples/[\w./-]+\w)", readme)
    assert {"examples/batch_images/job.json", "examples/batch_images/handler.py"} <= set(named)
    for path in named:
        assert (EXAMPLES.parent / path).is_file(), path
    assert not re.search(r"(?:--submit|--input) job\.json", readme)  # a file nobody has


@pytest.mark.parametrize("example", ["batch_videos/handler.py", "custom_input/sketch.py"])
def test_each_example_runs_the_job_it_ships(example: str, tmp_path: Path) -> None:
    script = EXAMPLES / example
    job = shipped_job(script.parent.name)
    with example_worker(script, tmp_path) as emu:
        done, _ = pull(emu, job, tmp_path / "out")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["ok"] and outcome["status"] == "COMPLETED"
    expected = len(job["images"]) if "images" in job else job["num_images"]
    assert len(outcome["files"]) == expected and all(Path(f["path"]).stat().st_size for f in outcome["files"])
