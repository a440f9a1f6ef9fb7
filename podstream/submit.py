"""Build a worker job input and submit it through a relay (`POST /v1/jobs`).

    import podstream.submit as submit
    job_input = submit.build_input(images=["cat.png", "dog.jpg"], params={"frames": 14})
    job = submit.submit(job_input, relay="http://127.0.0.1:8000", key=key)
    for file in podstream.watch(job.id, relay=job.relay, out=f"out/{job.id}", token=job.token): ...

The job input is the worker's schema (docs/worker.md): `task`, `items` (each with an `id`, and an
`image` as a data URL or http(s) URL, or a `prompt`, and an optional `seed`), `params`, `output`. Images
travel inside the job input, so the whole `POST /run` body must stay under RunPod's 10 MB cap: that is
checked here, before anything is sent, with a clear message (send fewer or smaller images, or URLs).
`validate` checks the input against the worker's JSON Schema (`worker.inputs.job_schema()`, or a
worker's own schema file) for the same reason: a typo must not reach a paid GPU.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx

from podstream.progress import TransferError, human_bytes
from podstream.watcher import http_url

#: RunPod's cap on a `/run` request body.
RUN_BODY_CAP: Final = 10_000_000
TASKS: Final = ("image-to-video", "text-to-image", "text-to-video")
_IMAGE_TYPES: Final = {"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"}


class InputError(ValueError):
    """The job input cannot be built as asked (unreadable file, no items, over the size cap, ...)."""


@dataclass(frozen=True)
class SubmittedJob:
    """A job the relay accepted: its id, the relay's URLs for it, and a subscriber token when auth is on."""

    id: str
    relay: str
    status: str
    token: str | None = None
    urls: dict[str, str] = field(default_factory=dict)


def image_item(source: str | Path, *, id: str | None = None) -> dict[str, Any]:
    """One `image` item: an http(s) URL as is, a local file as a base64 data URL."""
    text = str(source)
    if text.startswith(("http://", "https://", "data:")):
        name = Path(urllib.parse.urlsplit(text).path).stem if not text.startswith("data:") else ""
        return {"id": id if id is not None else _safe_id(name), "image": text}
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc.strerror}") from None
    mime = mimetypes.guess_type(path.name)[0] or _sniff(data)
    if mime not in _IMAGE_TYPES:
        raise InputError(f"{path} does not look like an image (PNG, JPEG, WebP, GIF or BMP)")
    encoded = base64.b64encode(data).decode("ascii")
    return {"id": id if id is not None else _safe_id(path.stem), "image": f"data:{mime};base64,{encoded}"}


def _sniff(data: bytes) -> str | None:
    signatures = {
        b"\x89PNG\r\n\x1a\n": "image/png",
        b"\xff\xd8\xff": "image/jpeg",
        b"GIF8": "image/gif",
        b"BM": "image/bmp",
    }
    for magic, mime in signatures.items():
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _safe_id(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64]


def read_prompts(path: Path | str) -> list[str]:
    """Prompts from a text file, one per line; blank lines and lines starting with `#` are skipped."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot read prompts from {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def build_input(
    *,
    task: str | None = None,
    images: Sequence[str | Path] = (),
    prompts: Sequence[str] = (),
    prompt: str | None = None,
    seed: int | None = None,
    params: Mapping[str, Any] | None = None,
    output: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A worker job input from images (image-to-video) or prompts (text-to-image by default).

    `prompt` is a shared prompt given to every image item; `seed`, when given, seeds item k with seed + k.
    """
    if bool(images) == bool(prompts):
        raise InputError("give images or prompts (one of them)")
    if task is None:
        task = "image-to-video" if images else "text-to-image"
    if task not in TASKS:
        raise InputError(f"unknown task {task!r}; one of {', '.join(TASKS)}")
    if images and task != "image-to-video":
        raise InputError(f"images go with the image-to-video task, not {task}")
    if prompts and task == "image-to-video":
        raise InputError("the image-to-video task needs images")
    items: list[dict[str, Any]] = []
    if images:
        for source in images:
            item = image_item(source)
            if prompt:
                item["prompt"] = prompt
            items.append(item)
    else:
        items = [{"id": f"p{k}", "prompt": text} for k, text in enumerate(prompts)]
    _dedupe_ids(items)
    if seed is not None:
        for k, item in enumerate(items):
            item["seed"] = seed + k
    job: dict[str, Any] = {"task": task, "items": items}
    if params:
        job["params"] = dict(params)
    if output:
        job["output"] = dict(output)
    return job


def _dedupe_ids(items: Iterable[dict[str, Any]]) -> None:
    seen: dict[str, int] = {}
    for item in items:
        base = item.get("id") or "item"
        count = seen.get(base, 0)
        seen[base] = count + 1
        if count:
            item["id"] = f"{base}-{count}"


def builtin_schema() -> dict[str, Any]:
    """The JSON Schema of the built-in worker's job input (`worker.inputs.job_schema()`).

    Imported on first use: `import podstream` stays light, and `worker.inputs` is pydantic only, no torch.
    """
    from worker.inputs import job_schema

    return job_schema()


def load_schema(path: Path | str) -> dict[str, Any]:
    """A job-input JSON Schema from a file (a worker with its own input model: `podstream schema`'s output)."""
    try:
        schema = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"cannot read the input schema {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise InputError(f"the input schema {path} is not valid JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise InputError(f"the input schema {path} is not a JSON Schema object")
    return schema


def validate(job_input: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> None:
    """Check `job_input` against the worker's input schema (default: the built-in worker's) before it is
    sent, so that a typo costs no GPU time. `InputError` names the field: `params.steps: -3 is less
    than the minimum of 1`."""
    import jsonschema

    schema = builtin_schema() if schema is None else dict(schema)
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InputError(f"the input schema is not a valid JSON Schema: {exc.message}") from None
    error = jsonschema.exceptions.best_match(validator_class(schema).iter_errors(dict(job_input)))
    if error is not None:
        raise InputError(f"the job input is not valid: {field_path(error.absolute_path)}: {error.message}")


def field_path(path: Iterable[str | int]) -> str:
    """`items[0].seed` for the path ["items", 0, "seed"]; `(the input)` for the input itself."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(the input)"


def check_size(job_input: Mapping[str, Any], policy: Mapping[str, Any] | None = None) -> int:
    """The bytes of the `/run` body this input makes; `InputError` if it is over RunPod's 10 MB cap."""
    body: dict[str, Any] = {"input": dict(job_input)}
    if policy:
        body["policy"] = dict(policy)
    size = len(json.dumps(body, separators=(",", ":")).encode())
    if size > RUN_BODY_CAP:
        raise InputError(
            f"the job input is {size:,} bytes ({human_bytes(size)}), over RunPod's 10 MB /run cap "
            f"({RUN_BODY_CAP:,} bytes): "
            "send fewer or smaller images, or image URLs, or split the batch"
        )
    return size


def submit(
    job_input: Mapping[str, Any],
    *,
    relay: str,
    key: str | None = None,
    policy: Mapping[str, Any] | None = None,
    timeout: float = 60.0,
    client: httpx.Client | None = None,
) -> SubmittedJob:
    """Submit `job_input` through the relay, which forwards it to RunPod and starts streaming it.

    Not retried: a lost answer could mean a job that runs (and is paid for) twice.
    """
    check_size(job_input, policy)
    base = http_url(relay)
    body: dict[str, Any] = {"input": dict(job_input)}
    if policy:
        body["policy"] = dict(policy)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        if client is None:
            response = httpx.post(f"{base}/v1/jobs", json=body, headers=headers, timeout=timeout)
        else:
            response = client.post(f"{base}/v1/jobs", json=body, headers=headers, timeout=timeout)
    except httpx.ConnectError as exc:
        raise TransferError(f"cannot reach the relay at {base}: {exc or type(exc).__name__}") from None
    except httpx.HTTPError as exc:
        raise TransferError(
            f"submitting to the relay at {base}: {type(exc).__name__} {exc}".rstrip()
        ) from None
    if response.status_code in (401, 403):
        hint = "" if key else " (no key given: --key or PODSTREAM_API_KEY)"
        raise TransferError(f"the relay rejected the API key (HTTP {response.status_code}){hint}")
    if response.status_code >= 400:
        raise TransferError(
            f"the relay refused the job (HTTP {response.status_code}): {_error_text(response)}"
        )
    try:
        answer = response.json()
    except ValueError:
        raise TransferError(f"the relay's answer is not JSON: {response.text[:200]}") from None
    job = answer.get("id") if isinstance(answer, dict) else None
    if not isinstance(job, str) or not job:
        raise TransferError(f"the relay's answer has no job id: {json.dumps(answer)[:200]}")
    urls = answer.get("urls") if isinstance(answer.get("urls"), dict) else {}
    token = answer.get("token") if isinstance(answer.get("token"), str) else None
    return SubmittedJob(job, base, str(answer.get("status") or "IN_QUEUE"), token, dict(urls))


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):  # the relay's {"error": {"code", "message"}}
            return f"{error.get('code', 'error')}: {error.get('message', '')}"[:300]
        for name in ("error", "message", "detail"):
            if body.get(name):
                return str(body[name])[:300]
    return json.dumps(body)[:200]
