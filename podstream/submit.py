"""Build a worker job input and submit it through a relay (`POST /v1/jobs`).

    import podstream.submit as submit
    from podstream.uploads import upload_inputs

    images = upload_inputs(["cat.png", "dog.jpg"], relay=relay, key=key)  # staged once, by sha256
    job_input = submit.build_input(images=images, params={"frames": 14})  # items: "input:<sha256>"
    job = submit.submit(job_input, relay=relay, key=key)
    for file in podstream.watch(job.id, relay=job.relay, out=f"out/{job.id}", token=job.token): ...

The job input is the worker's schema (docs/worker.md): `task`, `items` (each with an `id`, and an
`image`, or a `prompt`, and an optional `seed`), `params`, `output`. An item's `image` is an http(s) URL,
a relay input ref (`input:<sha256>`, an image uploaded to the relay first: `podstream.uploads`), or a
data URL (the image inside the job). Through a relay, refs keep the job small; straight to RunPod
(`podstream pull --submit`) images travel inline, and the whole `POST /run` body must stay under
RunPod's 10 MB cap: `check_size` says so before anything is sent. `validate` checks the input against
the worker's JSON Schema (`podstream.jobspec.job_schema()`, or a worker's own schema file) for the same
reason: a typo must not reach a paid GPU.
"""

from __future__ import annotations

import base64
import json
import mimetypes
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import httpx

from podstream import jobspec, problems, wire
from podstream.images import HEAD_BYTES, IMAGE_TYPES, sniff
from podstream.progress import TransferError, human_bytes
from podstream.watcher import http_url

#: RunPod's cap on a `/run` request body.
RUN_BODY_CAP: Final = wire.RUN_BODY_CAP
#: The relay's default cap on a `POST /v1/jobs` body (`max_submit_bytes`): it stages inline images itself.
RELAY_BODY_CAP: Final = 100_000_000
#: How an `image` that is not a local file starts: a URL, a data URL, or a relay input ref.
REMOTE_PREFIXES: Final = ("http://", "https://", "data:", "input:")
TASKS: Final = ("image-to-video", "text-to-image", "text-to-video")
#: A task of a model's own (`podstream.serve(generate, tasks={"upscale"})`): the job schema's rule for its name.
TASK_PATTERN: Final = re.compile(jobspec.TASK_PATTERN)


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


class InputRef(Protocol):
    """A local image staged on a relay (or about to be): the file it came from and its `input:<sha256>`.

    `podstream.uploads.LocalInput` and `UploadedInput` are ones; `build_input` makes their item."""

    @property
    def path(self) -> Path: ...

    @property
    def ref(self) -> str: ...


def is_local(source: str | Path) -> bool:
    """Whether an image source names a local file (not a URL, a data URL or an `input:` ref)."""
    return isinstance(source, Path) or not source.startswith(REMOTE_PREFIXES)


def image_item(source: str | Path | InputRef, *, id: str | None = None) -> dict[str, Any]:
    """One `image` item: a URL, data URL or `input:` ref as is, an `InputRef` as its ref, and a local file
    as a base64 data URL (the image inside the job: for RunPod without a relay). The id defaults to the
    file name's stem."""
    if not isinstance(source, (str, Path)):
        return {"id": id if id is not None else _safe_id(source.path.stem), "image": source.ref}
    text = str(source)
    if not is_local(source):
        remote = text.startswith(("http://", "https://"))
        name = Path(urllib.parse.urlsplit(text).path).stem if remote else ""
        return {"id": id if id is not None else _safe_id(name), "image": text}
    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc.strerror}") from None
    mime = mimetypes.guess_type(path.name)[0] or sniff(data[:HEAD_BYTES])
    if mime not in IMAGE_TYPES:
        raise InputError(f"{path} does not look like an image (PNG, JPEG, WebP, GIF or BMP)")
    encoded = base64.b64encode(data).decode("ascii")
    return {"id": id if id is not None else _safe_id(path.stem), "image": f"data:{mime};base64,{encoded}"}


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
    images: Sequence[str | Path | InputRef] = (),
    prompts: Sequence[str] = (),
    prompt: str | None = None,
    seed: int | None = None,
    params: Mapping[str, Any] | None = None,
    output: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A worker job input from images (image-to-video) or prompts (text-to-image by default).

    Each image is made an item by `image_item`: uploads (`podstream.uploads.upload_inputs`) become
    `input:<sha256>` refs, local files inline data URLs. `prompt` is a shared prompt given to every
    image item; `seed`, when given, seeds item k with seed + k.

    `task` may also be a task of a model's own (`podstream.serve(generate, tasks={"upscale"})`): its items
    carry the images (with `prompt`) or the prompts. Check such an input against that model's schema
    (`podstream schema --tasks upscale`); the built-in one knows only `TASKS`.
    """
    if bool(images) == bool(prompts):
        raise InputError("give images or prompts (one of them)")
    if task is None:
        task = "image-to-video" if images else "text-to-image"
    if task not in TASKS:
        if not TASK_PATTERN.fullmatch(task):
            raise InputError(
                f"{task!r} is not a task name: one of {', '.join(TASKS)}, or your model's own "
                "(letters, digits and _.:-, at most 64)"
            )
        if images and not prompt:
            # The worker requires a prompt in every item of a task other than image-to-video.
            raise InputError(
                f"the items of the task {task} need a prompt: give one for the images (--prompt)"
            )
    elif images and task != "image-to-video":
        raise InputError(f"images go with the image-to-video task, not {task}")
    elif prompts and task == "image-to-video":
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


#: What `--input-schema` takes besides a file, as the relay's does: the built-in worker's schema (the
#: default) or no check at all (a worker that takes any input).
BUILTIN_SCHEMA: Final = "builtin"
NO_SCHEMA: Final = "off"
#: Said when an input misses the built-in worker's shape as a whole (a field at its top level): most
#: likely, it is for a worker that takes its own input.
OWN_INPUT_HINT: Final = (
    "that is the built-in worker's input schema; for a worker that takes its own input (a handler wrapped "
    "with podstream.wrap, your own model), give this command and the relay --input-schema off or a schema file"
)


def builtin_schema() -> dict[str, Any]:
    """The JSON Schema of the built-in worker's job input (`podstream.jobspec.job_schema()`).

    Imported on first use: `import podstream` stays light, and `podstream.jobspec` is pydantic only, no torch.
    """
    from podstream.jobspec import job_schema

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


def check_input(job_input: Mapping[str, Any], schema: str | Path = BUILTIN_SCHEMA) -> None:
    """`validate` as `--input-schema` asks: `builtin` (the built-in worker's schema), `off` (no check) or
    the path of a JSON Schema file (`podstream schema` of a worker with its own input model)."""
    setting = str(schema)
    if setting == NO_SCHEMA:
        return
    validate(job_input, None if setting in ("", BUILTIN_SCHEMA) else load_schema(setting))


def validate(job_input: Mapping[str, Any], schema: Mapping[str, Any] | None = None) -> None:
    """Check `job_input` against the worker's input schema (default: the built-in worker's) before it is
    sent, so that a typo costs no GPU time. `InputError` names the field: `params.steps: -3 is less
    than the minimum of 1`; against the built-in schema, a problem with the input as a whole says how to
    check a worker's own input instead (`OWN_INPUT_HINT`)."""
    import jsonschema

    builtin = schema is None
    schema = builtin_schema() if schema is None else dict(schema)
    try:
        validator_class = jsonschema.validators.validator_for(schema)
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InputError(f"the input schema is not a valid JSON Schema: {exc.message}") from None
    error = jsonschema.exceptions.best_match(
        validator_class(schema).iter_errors(dict(job_input)),
        key=jsonschema.exceptions.by_relevance(strong=frozenset({"additionalProperties"})),
    )
    if error is not None:
        hint = f"; {OWN_INPUT_HINT}" if builtin and not error.absolute_path else ""
        task = job_input.get("task")
        if (
            builtin
            and list(error.absolute_path) == ["task"]
            and isinstance(task, str)
            and TASK_PATTERN.fullmatch(task)
        ):
            hint = (
                f"; for a task of your own model, check against its schema: podstream schema --tasks {task} "
                f"> {task}.json, then --input-schema {task}.json here and on the relay"
            )
        raise InputError(
            f"the job input is not valid: {field_path(error.absolute_path)}: {error.message}{hint}"
        )


def field_path(path: Iterable[str | int]) -> str:
    """`items[0].seed` for the path ["items", 0, "seed"]; `(the input)` for the input itself."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(the input)"


def check_size(
    job_input: Mapping[str, Any], policy: Mapping[str, Any] | None = None, *, relay: bool = False
) -> int:
    """The bytes of the request body this input makes; `InputError` when it is over the cap: RunPod's
    10 MB on `/run`, or with `relay` the relay's 100 MB on `POST /v1/jobs` (`RELAY_BODY_CAP`)."""
    body: dict[str, Any] = {"input": dict(job_input)}
    if policy:
        body["policy"] = dict(policy)
    size = len(json.dumps(body, separators=(",", ":")).encode())
    cap = RELAY_BODY_CAP if relay else RUN_BODY_CAP
    if size <= cap:
        return size
    head = f"the job input is {size:,} bytes ({human_bytes(size)}), over "
    if relay:
        raise InputError(
            f"{head}the relay's {cap // 1_000_000} MB submit cap ({cap:,} bytes): give images as files "
            "(--images uploads them to the relay) or URLs, or split the batch"
        )
    raise InputError(
        f"{head}RunPod's 10 MB /run cap ({cap:,} bytes): submit through a relay "
        "(podstream submit --relay URL), which uploads images by reference, "
        "or send fewer or smaller images, or image URLs"
    )


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

    Its `input:<sha256>` images must have been uploaded with the same key (`podstream.uploads`). Not
    retried: a lost answer could mean a job that runs (and is paid for) twice.
    """
    check_size(job_input, policy, relay=True)
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
        reached = problems.sentence(problems.Code.RELAY_UNREACHABLE, url=base)
        raise TransferError(f"{reached}: {exc or type(exc).__name__}") from None
    except httpx.HTTPError as exc:
        raise TransferError(
            f"submitting to the relay at {base}: {type(exc).__name__} {exc}".rstrip()
        ) from None
    refused = problems.refusal(response.status_code, response.text, credential="key" if key else None)
    if refused is not None:
        hint = "" if key else "; give one with --key or PODSTREAM_API_KEY"
        raise TransferError(f"{refused[1]} (HTTP {response.status_code}{hint})")
    if response.status_code >= 400:
        raise TransferError(
            f"the relay refused the job (HTTP {response.status_code}): {relay_error_text(response)}"
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


def relay_error_text(response: httpx.Response) -> str:
    """A relay's error answer as one line: `code: message` from `{"error": {"code", "message"}}` (whole up
    to 600 characters: the relay's messages say what to do at their end); anything else, shortened."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):  # the relay's {"error": {"code", "message"}}
            return " ".join(f"{error.get('code', 'error')}: {error.get('message', '')}".split())[:600]
        for name in ("error", "message", "detail"):
            if body.get(name):
                return str(body[name])[:300]
    return json.dumps(body)[:200]
