"""podstream.submit: building job inputs (checked against the worker's schema) and submitting them."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

import podstream.submit as submit_mod
from podstream.jobspec import ItemError, parse_job
from podstream.progress import TransferError, human_bytes
from podstream.submit import InputError
from podstream.uploads import LocalInput, upload_inputs
from relay.api.auth import generate_key, hash_key
from tests.podstream.stack import Stack, local_stack


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
        ({"prompts": ["a"], "task": "dance floor"}, "'dance floor' is not a task name"),
        ({"images": ["https://x/y.png"], "task": "upscale"}, "the items of the task upscale need a prompt"),
        ({"images": ["/no/such/file.png"]}, "cannot read image /no/such/file.png"),
    ],
)
def test_bad_requests_are_clear(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        submit_mod.build_input(**kwargs)


def test_a_task_of_the_models_own_builds_and_checks_against_its_schema() -> None:
    """docs/worker.md: a model's own task names are job tasks like the built-in ones."""
    from podstream.jobspec import job_schema

    by_prompt = submit_mod.build_input(task="upscale", prompts=["a", "b"])
    assert by_prompt["task"] == "upscale" and [i["prompt"] for i in by_prompt["items"]] == ["a", "b"]
    by_image = submit_mod.build_input(task="upscale", images=["https://x/y.png"], prompt="sharper")
    assert by_image["items"] == [{"id": "y", "image": "https://x/y.png", "prompt": "sharper"}]
    submit_mod.validate(by_prompt, job_schema(tasks={"upscale"}))  # its model's schema takes it
    with pytest.raises(InputError, match=r"podstream schema --tasks upscale > upscale\.json"):
        submit_mod.validate(by_prompt)  # the built-in schema does not, and says what to do


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


def test_an_input_of_another_shape_says_how_to_check_a_workers_own(tmp_path: Path) -> None:
    wrapped = {"prompt": "a lighthouse", "num_images": 6}  # a wrapped handler's own input
    with pytest.raises(InputError) as info:
        submit_mod.check_input(wrapped)
    assert str(info.value).startswith("the job input is not valid: (the input): Additional properties")
    assert str(info.value).endswith(f"; {submit_mod.OWN_INPUT_HINT}")
    assert "--input-schema off" in submit_mod.OWN_INPUT_HINT and "podstream.wrap" in submit_mod.OWN_INPUT_HINT
    with pytest.raises(InputError) as info:  # a mistake inside a built-in input: only named
        submit_mod.check_input({"task": "text-to-image", "items": [{"id": "a", "promt": "x"}]}, "builtin")
    assert submit_mod.OWN_INPUT_HINT not in str(info.value)
    submit_mod.check_input(wrapped, "off")
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps({"type": "object", "required": ["prompt"]}))
    submit_mod.check_input(wrapped, schema_file)
    with pytest.raises(
        InputError, match=r"^the job input is not valid: \(the input\): 'prompt' is a required property$"
    ):
        submit_mod.check_input({"num_images": 1}, str(schema_file))


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


# ---- `podstream submit --images` through a real relay: uploads first, then a small job of refs


def cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PODSTREAM_", "RUNPOD_"))}
    return subprocess.run(
        [sys.executable, "-m", "podstream", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env, "COLUMNS": "200"},
        stdin=subprocess.DEVNULL,
    )


def error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one line a failed command ends with (no traceback, nothing else from podstream)."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("podstream")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@dataclass
class Relay:
    stack: Stack
    key: str  # every scope
    reader: str  # jobs:read only: may not upload

    def args(self, key: str | None = None) -> list[str]:
        return [
            "--relay",
            self.stack.relay,
            "--key",
            key or self.key,
            "--input-schema",
            str(self.stack.schema),
        ]

    def input_bytes(self) -> float:
        """What the relay has received as input uploads (its bytes_in metric)."""
        text = httpx.get(f"{self.stack.relay}/metrics", headers={"Authorization": f"Bearer {self.key}"}).text
        found = re.search(r'^podstream_relay_bytes_in_total\{source="input"\} (\S+)$', text, re.M)
        return float(found[1]) if found else 0.0


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    key, reader = generate_key(), generate_key()
    keys = f"{hash_key(key)},reader={hash_key(reader)}/jobs:read"
    with local_stack(tmp_path_factory.mktemp("stack"), {"PODSTREAM_API_KEYS": keys}) as stack:
        yield Relay(stack, key, reader)


def pictures(folder: Path, count: int, shade: int) -> list[Path]:
    """`count` distinct PNGs, distinct from another test's (another `shade`): the relay is shared."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{k:02d}.png" for k in range(count)]
    for k, path in enumerate(paths):
        Image.new("RGB", (32, 32), (k, shade, 255 - k)).save(path)
    return paths


def test_submit_uploads_images_once_and_sends_a_small_job(relay: Relay, tmp_path: Path) -> None:
    images = pictures(tmp_path / "in", 20, shade=11)
    before = relay.input_bytes()
    relay.stack.emu.reset_stats()
    out = tmp_path / "out"
    args = [*relay.args(), "--images", *map(str, images), images[0].as_posix(), "--out", str(out)]
    first = cli("submit", *args)
    assert first.returncode == 0, first.stderr
    sent = sum(p.stat().st_size for p in images)
    assert f"uploaded 20 image(s) ({human_bytes(sent)})" in first.stderr  # the duplicate went once
    assert relay.input_bytes() - before == sent
    assert "COMPLETED; 21 file(s) saved" in first.stdout
    run = relay.stack.emu.stats()["routes"]["run"]
    # what RunPod got: a signed URL and a sha256 per image, never the image
    assert run["requests"] == 1 and run["max_request_bytes"] < 21 * 400, run

    again = cli("submit", *args, "--detach")
    assert again.returncode == 0, again.stderr
    assert "uploaded 0 image(s); 20 already on the relay" in again.stderr
    assert relay.input_bytes() - before == sent  # nothing was sent again


def test_submit_json_and_quiet_show_no_upload_bar(relay: Relay, tmp_path: Path) -> None:
    images = pictures(tmp_path / "in", 3, shade=12)
    for flag in ("--json", "-q"):
        result = cli(
            "submit", *relay.args(), "--images", *map(str, images), "--out", str(tmp_path), "--detach", flag
        )
        assert result.returncode == 0, result.stderr
        assert "upload" not in result.stderr
        if flag == "--json":
            assert json.loads(result.stdout)["id"]


def test_the_python_api_skips_what_the_relay_holds(relay: Relay, tmp_path: Path) -> None:
    images = pictures(tmp_path / "in", 4, shade=13)
    copy = tmp_path / "copy.png"
    copy.write_bytes(images[0].read_bytes())
    first = upload_inputs([*images, copy], relay=relay.stack.relay, key=relay.key, workers=2)
    assert [u.skipped for u in first] == [False] * 4 + [False]
    assert first[4].ref == first[0].ref and first[4].path == copy
    assert all(u.url and u.url.startswith(relay.stack.relay + "/v1/inputs/") for u in first)
    second = upload_inputs(images, relay=relay.stack.relay, key=relay.key)
    assert [u.skipped for u in second] == [True] * 4
    assert [u.ref for u in second] == [u.ref for u in first[:4]]
    job = submit_mod.submit(
        submit_mod.build_input(images=second, seed=3), relay=relay.stack.relay, key=relay.key
    )
    assert job.id


def test_the_relay_refusing_an_upload_is_one_line(relay: Relay, tmp_path: Path) -> None:
    [image] = pictures(tmp_path / "in", 1, shade=14)
    result = cli("submit", *relay.args(relay.reader), "--images", str(image), "--out", str(tmp_path))
    line = error_line(result, 1)
    assert line.startswith(f"podstream submit: the relay refused the API key uploading {image} (HTTP 403"), (
        line
    )
    fake = LocalInput(tmp_path / "fake.png", hashlib.sha256(b"not an image").hexdigest(), 12, "image/png")
    fake.path.write_bytes(b"not an image")  # past the local check: the relay's own
    with pytest.raises(InputError, match=f"^{fake.path} is not an image the relay takes: .*HTTP 415"):
        upload_inputs([fake], relay=relay.stack.relay, key=relay.key)


def test_a_file_that_is_not_an_image_is_named_before_anything_is_sent(tmp_path: Path) -> None:
    good = png(tmp_path / "a.png")
    notes = tmp_path / "notes.png"
    notes.write_text("shopping list")
    result = cli(
        "submit", "--relay", "http://127.0.0.1:9", "--images", str(good), str(notes), "--out", str(tmp_path)
    )
    assert error_line(result, 2) == (
        f"podstream submit: {notes} does not look like an image (PNG, JPEG, WebP, GIF or BMP)"
    )
    missing = cli("submit", "--relay", "http://127.0.0.1:9", "--images", "gone.png", "--out", str(tmp_path))
    assert "cannot read image gone.png: No such file" in error_line(missing, 2)


def test_pull_submit_over_runpods_cap_names_the_relay(tmp_path: Path) -> None:
    big = png(tmp_path / "big.png")
    job = submit_mod.build_input(images=[big] * 1)
    job["items"][0]["image"] += "A" * 10_500_000  # inline, as pull --submit sends images
    (tmp_path / "job.json").write_text(json.dumps({"input": job}))
    result = cli(
        "pull", "--submit", str(tmp_path / "job.json"), "--runpod-url", "http://127.0.0.1:9/v2/ep",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    line = error_line(result, 2)
    cap = "over RunPod's 10 MB /run cap (10,000,000 bytes)"
    assert f"{cap}: submit through a relay (podstream submit --relay URL)" in line
    (tmp_path / "refs.json").write_text(
        json.dumps({"task": "image-to-video", "items": [{"image": "input:" + "a" * 64}]})
    )
    refs = cli(
        "pull", "--submit", str(tmp_path / "refs.json"), "--runpod-url", "http://127.0.0.1:9/v2/ep",
        "--out", str(tmp_path / "out"),
    )  # fmt: skip
    assert "items[0].image is a relay input (input:aaaa" in error_line(refs, 2)
