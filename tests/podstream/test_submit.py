"""podstream.submit: building job inputs (checked against the worker's schema) and submitting them."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import podstream.submit as submit_mod
from podstream.progress import TransferError
from podstream.submit import InputError
from worker.inputs import ItemError, parse_job


def png(path: Path, size: tuple[int, int] = (16, 12)) -> Path:
    Image.new("RGB", size, (200, 30, 60)).save(path)
    return path


def test_images_become_data_urls_the_worker_accepts(tmp_path: Path) -> None:
    a = png(tmp_path / "cat photo.png")
    b = png(tmp_path / "b.jpg")
    job_input = submit_mod.build_input(
        images=[a, b, "https://example.com/imgs/c.webp"], prompt="a cat", seed=5, params={"frames": 4}
    )
    assert job_input["task"] == "image-to-video"
    items = job_input["items"]
    assert [i["id"] for i in items] == ["cat_photo", "b", "c"]
    assert [i["seed"] for i in items] == [5, 6, 7]
    assert items[0]["image"].startswith("data:image/png;base64,")
    assert base64.b64decode(items[0]["image"].split(",", 1)[1]) == a.read_bytes()
    assert items[1]["image"].startswith("data:image/jpeg;base64,")
    assert items[2]["image"] == "https://example.com/imgs/c.webp"
    parsed = parse_job(job_input)  # the worker's own validation
    assert parsed.task == "image-to-video" and parsed.params.frames == 4
    assert not any(isinstance(i, ItemError) for i in parsed.items)


def test_prompts_become_text_to_image_items(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("# my prompts\na red fox\n\n  a blue bird  \n")
    prompts = submit_mod.read_prompts(path)
    assert prompts == ["a red fox", "a blue bird"]
    job_input = submit_mod.build_input(prompts=prompts, output={"format": "webp"})
    assert job_input == {
        "task": "text-to-image",
        "items": [{"id": "p0", "prompt": "a red fox"}, {"id": "p1", "prompt": "a blue bird"}],
        "output": {"format": "webp"},
    }
    assert parse_job(job_input).format == "webp"
    assert submit_mod.build_input(task="text-to-video", prompts=["x"])["task"] == "text-to-video"


def test_duplicate_ids_are_made_unique(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    first = png(tmp_path / "x.png")
    second = png(tmp_path / "a" / "x.png")
    items = submit_mod.build_input(images=[first, second, first])["items"]
    assert [i["id"] for i in items] == ["x", "x-1", "x-2"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "give images or prompts"),
        ({"prompts": ["a"], "images": ["b.png"]}, "give images or prompts"),
        ({"prompts": ["a"], "task": "image-to-video"}, "needs images"),
        ({"images": ["https://x/y.png"], "task": "text-to-image"}, "images go with"),
        ({"prompts": ["a"], "task": "dance"}, "unknown task"),
        ({"images": ["/no/such/file.png"]}, "cannot read image /no/such/file.png"),
    ],
)
def test_bad_requests_are_clear(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        submit_mod.build_input(**kwargs)


def test_not_an_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(InputError, match="does not look like an image"):
        submit_mod.image_item(path)
    sniffed = tmp_path / "noext"
    sniffed.write_bytes(png(tmp_path / "p.png").read_bytes())
    assert submit_mod.image_item(sniffed)["image"].startswith("data:image/png;base64,")


def test_inputs_over_runpods_run_cap_are_refused_before_sending() -> None:
    small = {"task": "text-to-image", "items": [{"prompt": "x"}]}
    assert submit_mod.check_size(small) < 100
    big = {"task": "image-to-video", "items": [{"image": "A" * 10_000_000}]}
    with pytest.raises(
        InputError, match=r"bytes \(\d+\.\d MB\), over RunPod's 10 MB /run cap \(10,000,000 bytes\)"
    ):
        submit_mod.check_size(big)


def relay_answering(*responses: httpx.Response) -> tuple[httpx.Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return httpx.Client(transport=httpx.MockTransport(handler)), seen


def test_submit_posts_the_input_and_returns_the_job() -> None:
    answer = {"id": "j1", "status": "IN_QUEUE", "urls": {"ws": "ws://r/v1/ws"}, "token": "t1"}
    client, seen = relay_answering(httpx.Response(201, json=answer))
    with client:
        job = submit_mod.submit(
            {"task": "text-to-image", "items": []}, relay="http://r:1/", key="k", client=client
        )
    assert job == submit_mod.SubmittedJob("j1", "http://r:1", "IN_QUEUE", "t1", {"ws": "ws://r/v1/ws"})
    assert seen[0].url == "http://r:1/v1/jobs"
    assert seen[0].headers["authorization"] == "Bearer k"
    assert json.loads(seen[0].content) == {"input": {"task": "text-to-image", "items": []}}


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(401, json={"error": "bad key"}), r"rejected the API key \(HTTP 401\)"),
        (httpx.Response(400, json={"error": "input.items: too many"}), "refused the job .*too many"),
        (
            httpx.Response(413, json={"error": {"code": "too_large", "message": "over 10 MB"}}),
            r"refused the job \(HTTP 413\): too_large: over 10 MB",
        ),
        (httpx.Response(201, text="<html>"), "not JSON"),
        (httpx.Response(201, json={"status": "IN_QUEUE"}), "no job id"),
    ],
)
def test_submit_errors_are_one_clear_line(response: httpx.Response, message: str) -> None:
    client, _ = relay_answering(response)
    with client, pytest.raises(TransferError, match=message):
        submit_mod.submit({"task": "text-to-image"}, relay="http://r:1", key="k", client=client)


def test_submit_to_nothing_says_so() -> None:
    with pytest.raises(TransferError, match=r"cannot reach the relay at http://127\.0\.0\.1:9"):
        submit_mod.submit({"task": "text-to-image"}, relay="http://127.0.0.1:9")


# ---- validation against the worker's JSON Schema, before anything is sent


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"params": {"steps": -3}}, "params.steps: -3 is less than the minimum of 1"),
        ({"task": "text-to-imag"}, "task: 'text-to-imag' is not one of"),
        (
            {"items": [{"id": "a", "prompt": "x", "sed": 3}]},
            "items[0]: Additional properties are not allowed",
        ),
        ({"items": []}, "items: [] should be non-empty"),
        ({"output": {"format": "gif"}}, "output.format: 'gif'"),
    ],
)
def test_validate_names_the_field(change: dict[str, Any], message: str) -> None:
    job_input = {"task": "text-to-image", "items": [{"id": "a", "prompt": "a fox"}], **change}
    with pytest.raises(InputError) as info:
        submit_mod.validate(job_input)
    assert str(info.value).startswith("the job input is not valid: ") and message in str(info.value)


def test_validate_accepts_what_build_input_makes_and_a_workers_own_schema(tmp_path: Path) -> None:
    submit_mod.validate(submit_mod.build_input(prompts=["a fox", "a hen"], params={"steps": 4}))
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(
        json.dumps({"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}})
    )
    schema = submit_mod.load_schema(schema_file)
    submit_mod.validate({"text": "hi"}, schema)
    with pytest.raises(InputError, match=r"\(the input\): 'text' is a required property"):
        submit_mod.validate({"task": "text-to-image"}, schema)
    schema_file.write_text('{"type": 12}')
    with pytest.raises(InputError, match="not a valid JSON Schema"):
        submit_mod.validate({}, submit_mod.load_schema(schema_file))
    schema_file.write_text("[1")
    with pytest.raises(InputError, match="is not valid JSON"):
        submit_mod.load_schema(schema_file)
    with pytest.raises(InputError, match="cannot read the input schema"):
        submit_mod.load_schema(tmp_path / "missing.json")


def test_validation_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, podstream, podstream.submit as s\n"
        "assert 'jsonschema' not in sys.modules and 'worker' not in sys.modules\n"
        "s.validate({'task': 'text-to-image', 'items': [{'id': 'a', 'prompt': 'x'}]})\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
