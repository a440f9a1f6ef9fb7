"""The job input contract: what a client puts in RunPod's `{"input": ...}` (documented in docs/worker.md).

Shared by everyone who checks a job before a GPU is paid: the worker (which parses it), the relay (which
validates a submit against `job_schema()`), and the CLI. Pydantic only: no torch, no HTTP; fetching and
decoding a job's images is the worker's (`worker.inputs`).

Two levels of failure, on purpose:

- the *job* is malformed (not an object, unknown task, bad params, no items, too many items): `parse_job`
  raises `JobInputError` with one clear line naming the field (`input.params.frames: ...`), and the job
  ends FAILED with that message before anything is generated;
- one *item* is bad (not an object, prompt too long, image missing or undecodable): that item becomes an
  `error` envelope and the rest of the batch goes on. `parse_job` returns such items as `ItemError`s;
  images are only fetched and decoded later (`load_image`, in a worker thread).

The top-level object forbids unknown keys so a typo is an error, not a silently ignored setting. New job
shapes are added as new top-level keys next to `task`: `{"resend": {...}}` (`parse_resend`) asks the worker
to yield again, from its output cache, envelopes of an earlier job that the relay never received.

A model may declare its own input instead (`input_model`, a pydantic model): the whole job input is then one
object of that model (`parse_custom`), e.g. `{"prompt": "a cat", "num_images": 4}`, generated as one item.
Its fields named like `Params` fields (`width`, `num_images`, `steps`, ...) keep their meaning, and `seed`
and `id` those of an item. `job_schema()` is the JSON Schema of whichever input the worker takes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import GenerateJsonSchema

from podstream import wire

TASKS: Final = ("image-to-video", "text-to-image", "text-to-video")
#: A custom task name (a model's own `tasks`): short, no spaces, so it reads well in logs and URLs.
TASK_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
#: Seeds drawn for items that have none: below 2**32, so every framework's generator takes them.
SEED_LIMIT: Final = 2**32
VIDEO_TASKS: Final = frozenset({"image-to-video", "text-to-video"})
SHA256_PATTERN: Final = r"^[0-9a-f]{64}$"
#: An `image_sig`: a URL-safe base64 signature, as the relay makes them.
SIG_PATTERN: Final = r"^[A-Za-z0-9_-]{1,128}$"
#: What an item's `image` starts with when it names an image staged on a relay.
REF_PREFIX: Final = "input:"
Task = Literal["image-to-video", "text-to-image", "text-to-video"]
Format = Literal["mp4", "webm", "png", "webp", "jpeg"]
#: How each file leaves the worker: streamed as parts, uploaded (a `ref` is streamed), or uploaded when large.
Delivery = Literal["stream", "upload", "auto"]


@dataclass(frozen=True)
class Limits:
    """Every input limit, with its default, in one place. `from_env` reads `PODSTREAM_<NAME>` overrides."""

    max_items: int = 10_000
    max_prompt_chars: int = 2_000
    max_image_bytes: int = 20 * 1024 * 1024  # encoded image, inline or fetched
    max_image_pixels: int = 4096 * 4096  # decoded; guards against decompression bombs
    fetch_timeout_s: float = 20.0
    max_frames: int = 1024
    max_side: int = 4096
    max_redirects: int = 5
    #: Image URLs resolving to loopback, private, link-local (cloud metadata) ... addresses are refused
    #: unless this is set (`PODSTREAM_ALLOW_PRIVATE_URLS=1`): a job must not make the worker probe its network.
    allow_private_urls: bool = False
    #: Hosts (`host` or `host:port`, IPv6 as `[::1]:8700`) whose URLs may resolve to such addresses: the relay
    #: on a private network (`PODSTREAM_INPUT_HOSTS=10.0.0.5:8700`), without opening every private address.
    input_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_hosts", tuple(_host_entry(entry) for entry in self.input_hosts))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Limits:
        """The defaults, overridden by each `PODSTREAM_<NAME>` that is set and not empty. A value that does
        not parse raises `ValueError` naming the variable."""
        values: dict[str, Any] = {}
        for name, field_ in cls.__dataclass_fields__.items():
            variable = f"PODSTREAM_{name.upper()}"
            raw = environ.get(variable, "").strip()
            if not raw:
                continue
            parse = _ENV_PARSERS[str(field_.type)]
            try:
                values[name] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"{variable}={raw!r} {exc}") from None
        return cls(**values)


def _parse_bool(raw: str) -> bool:
    value = raw.lower()
    if value not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise ValueError("is not a boolean (1 or 0, true or false, yes or no, on or off)")
    return value in ("1", "true", "yes", "on")


def _parse_number(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            return kind(raw)
        except ValueError:
            raise ValueError("is not a number") from None

    return parse


def _parse_hosts(raw: str) -> tuple[str, ...]:
    """`host`, `host:port` or `[ipv6]:port` entries separated by commas or whitespace."""
    entries = [entry for entry in re.split(r"[\s,]+", raw) if entry]
    try:
        return tuple(_host_entry(entry) for entry in entries)
    except ValueError as exc:
        raise ValueError(f"is not a list of host or host:port entries: {exc}") from None


#: How `Limits.from_env` reads each field, by its annotation.
_ENV_PARSERS: Final[dict[str, Callable[[str], Any]]] = {
    "bool": _parse_bool, "int": _parse_number(int), "float": _parse_number(float),
    "tuple[str, ...]": _parse_hosts,
}  # fmt: skip

_HOST_ENTRY: Final = re.compile(
    r"^(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<host>[a-z0-9_.-]+))(?::(?P<port>[0-9]{1,5}))?$"
)


def _host_entry(entry: str) -> str:
    """One allow-list entry in its canonical form: lowercased, IP addresses compressed, IPv6 in brackets."""
    import ipaddress

    match = _HOST_ENTRY.match(entry.strip().lower())
    if match is None or (match["host"] is not None and match["host"].strip(".") == ""):
        raise ValueError(f"{entry!r} is not host, host:port or [ipv6]:port{_entry_hint(entry)}")
    port = match["port"]
    if port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"{entry!r}: the port must be 1..65535")
    if match["ipv6"] is not None:
        try:
            host = f"[{ipaddress.IPv6Address(match['ipv6']).compressed}]"
        except ValueError:
            raise ValueError(f"{entry!r}: {match['ipv6']} is not an IPv6 address") from None
    else:
        host = canonical_host(match["host"])
    return host if port is None else f"{host}:{int(port)}"


def _entry_hint(entry: str) -> str:
    import ipaddress

    scheme, sep, rest = entry.partition("://")
    if sep and scheme.isalpha():
        return f" (no scheme or path: {rest.split('/', 1)[0]})"
    for candidate in (entry, entry.rpartition(":")[0]):
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        return " (put an IPv6 address in brackets: [::1]:8700)"
    return ""


def canonical_host(host: str) -> str:
    """A URL's or an entry's host as the allow-list compares it (`[::1]`, `10.0.0.5`, `relay.internal`)."""
    import ipaddress

    host = host.lower().rstrip(".")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    return f"[{ip.compressed}]" if ip.version == 6 else ip.compressed


class JobInputError(ValueError):
    """The job input as a whole is unusable; the message is one line naming the offending field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Params(_Strict):
    """Generation settings shared by every item of the job. `None` means the model's own default."""

    frames: Annotated[int, Field(ge=1)] | None = None
    fps: Annotated[float, Field(gt=0, le=120)] | None = None
    width: Annotated[int, Field(ge=8)] | None = None
    height: Annotated[int, Field(ge=8)] | None = None
    steps: Annotated[int, Field(ge=1, le=500)] | None = None
    guidance: Annotated[float, Field(ge=0, le=50)] | None = None
    min_guidance: Annotated[float, Field(ge=0, le=50)] | None = None  # image-to-video (SVD)
    max_guidance: Annotated[float, Field(ge=0, le=50)] | None = None  # image-to-video (SVD)
    motion_bucket_id: Annotated[int, Field(ge=0, le=1023)] | None = None  # image-to-video (SVD)
    noise_aug_strength: Annotated[float, Field(ge=0, le=1)] | None = None  # image-to-video (SVD)
    decode_chunk_size: Annotated[int, Field(ge=1, le=1024)] | None = None  # video VAE decode batch
    negative_prompt: Annotated[str, Field(max_length=2000)] | None = None
    batch_size: Annotated[int, Field(ge=1, le=64)] = 1  # items generated per pipeline call
    num_images: Annotated[int, Field(ge=1, le=64)] = 1  # outputs (files) per item, seeds seed, seed+1, ...


class Output(_Strict):
    """How each result is encoded and split. `format` defaults to mp4 for video tasks, png for images."""

    format: Format | None = None
    crf: Annotated[int, Field(ge=0, le=63)] | None = None  # mp4: 0..51 (default 23), webm: 0..63 (default 32)
    quality: Annotated[int, Field(ge=1, le=100)] = 90  # webp / jpeg
    fragmented: bool = False  # fragmented MP4 instead of a faststart one
    part_bytes: Annotated[int, Field(ge=1024, le=wire.DEFAULT_PART_BYTES)] = wire.DEFAULT_PART_BYTES


class Item(_Strict):
    """One input of the batch. `image` is base64, a `data:` URL, an http(s) URL, or `input:<sha256>` (an image
    staged on a relay, fetched at the job's `inputs.url` with the item's `image_sig`); `image_sha256`, when
    given, is the SHA-256 its bytes must have (an `input:` reference names its own)."""

    id: Annotated[str, Field(max_length=wire.MAX_ID_CHARS)] = ""
    prompt: str | None = None
    negative_prompt: str | None = None
    image: str | None = None
    image_sha256: Annotated[str, Field(pattern=SHA256_PATTERN)] | None = None
    image_sig: Annotated[str, Field(pattern=SIG_PATTERN)] | None = None
    seed: Annotated[int, Field(ge=0, lt=2**63)] | None = None


class Inputs(_Strict):
    """Where the job's `input:` references are fetched: `url` with `{sha256}` (and `{sig}`, the item's
    `image_sig`) filled in. Set by the relay that staged them: one URL for the whole job instead of one per
    item keeps a job of thousands of images far under RunPod's 10 MB `/run` cap."""

    url: Annotated[str, Field(max_length=wire.MAX_URL_CHARS, pattern=r"^https?://.*\{sha256\}")]


class _Job(_Strict):
    task: Annotated[str, Field(pattern=TASK_PATTERN)]
    items: list[Any] = Field(min_length=1)
    params: Params = Params()
    output: Output = Output()
    delivery: Delivery = "auto"
    inputs: Inputs | None = None


@dataclass(frozen=True)
class ItemError:
    """An item rejected before generation; it becomes an `error` envelope."""

    index: int
    id: str
    code: str
    message: str


@dataclass(frozen=True)
class Job:
    task: str
    items: Sequence[Item | ItemError]
    params: Params
    output: Output
    delivery: str = "auto"
    custom: BaseModel | None = None  # the model's own input (`parse_custom`), handed to it as `Request.input`
    inputs_url: str | None = None  # where `input:` references are fetched (`Inputs.url`)

    @property
    def video(self) -> bool:
        return self.task in VIDEO_TASKS

    @property
    def builtin(self) -> bool:
        return self.task in TASKS

    @property
    def format(self) -> str:
        """The encoding asked for; for a custom task without one, "" (each result's kind decides)."""
        if self.output.format is not None or not self.builtin:
            return self.output.format or ""
        return "mp4" if self.video else "png"


def parse_job(raw: object, limits: Limits = Limits(), *, tasks: Iterable[str] = TASKS) -> Job:
    """Validate a job's `input`. Raises `JobInputError` for a malformed job; bad items come back as `ItemError`.

    `tasks` are the task names the worker's model does (built-in or its own)."""
    if not isinstance(raw, Mapping):
        raise JobInputError(f"input must be a JSON object, got {_json_type(raw)}")
    try:
        job = _Job.model_validate(raw)
    except ValidationError as exc:
        raise JobInputError(_describe(exc)) from None
    known = sorted(set(tasks))
    if job.task not in known:
        raise JobInputError(f"input.task: must be one of {', '.join(repr(t) for t in known)}")
    if len(job.items) > limits.max_items:
        raise JobInputError(f"input.items: {len(job.items)} items, at most {limits.max_items} per job")
    params = job.params
    if params.frames is not None and params.frames > limits.max_frames:
        raise JobInputError(f"input.params.frames: at most {limits.max_frames}, got {params.frames}")
    for side in ("width", "height"):
        value = getattr(params, side)
        if value is not None and value > limits.max_side:
            raise JobInputError(f"input.params.{side}: at most {limits.max_side}, got {value}")
    video = job.task in VIDEO_TASKS
    fmt = job.output.format
    if fmt is not None and job.task in TASKS and (fmt in ("mp4", "webm")) != video:
        kinds = "mp4 or webm" if video else "png, webp or jpeg"
        raise JobInputError(
            f"input.output.format: {job.task} makes {'videos' if video else 'images'}: use {kinds}"
        )
    if fmt in (None, "mp4") and job.output.crf is not None and job.output.crf > 51:
        raise JobInputError(f"input.output.crf: H.264 takes 0..51, got {job.output.crf}")
    outputs = len(job.items) * params.num_images
    if outputs > limits.max_items:
        raise JobInputError(f"input.params.num_images: {outputs} outputs, at most {limits.max_items} per job")
    items = [_parse_item(i, raw_item, job.task, limits) for i, raw_item in enumerate(job.items)]
    inputs_url = job.inputs.url if job.inputs is not None else None
    return Job(job.task, items, params, job.output, job.delivery, inputs_url=inputs_url)


def parse_custom(raw: object, input_model: type[BaseModel], task: str, limits: Limits = Limits()) -> Job:
    """Validate a job input against a model's own `input_model`: one item, whose `Request.input` it is."""
    if not isinstance(raw, Mapping):
        raise JobInputError(f"input must be a JSON object, got {_json_type(raw)}")
    try:
        custom = input_model.model_validate(raw)
    except ValidationError as exc:
        raise JobInputError(_describe(exc)) from None
    fields = custom.model_dump()
    try:
        params = Params.model_validate({k: v for k, v in fields.items() if k in Params.model_fields})
    except ValidationError as exc:
        raise JobInputError(_describe(exc)) from None
    for side in ("width", "height"):
        value = getattr(params, side)
        if value is not None and value > limits.max_side:
            raise JobInputError(f"input.{side}: at most {limits.max_side}, got {value}")
    seed = fields.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise JobInputError(f"input.seed: must be an integer 0..2^63-1, got {seed!r}")
    item_id = fields.get("id") if isinstance(fields.get("id"), str) else ""
    item = Item.model_construct(
        id=str(item_id)[: wire.MAX_ID_CHARS],
        prompt=fields.get("prompt") if isinstance(fields.get("prompt"), str) else None,
        negative_prompt=fields.get("negative_prompt")
        if isinstance(fields.get("negative_prompt"), str)
        else None,
        image=fields.get("image") if isinstance(fields.get("image"), str) else None,
        image_sha256=_sha256_field(fields.get("image_sha256")),
        seed=seed,
    )
    return Job(task, [item], params, Output(), "auto", custom)


def _sha256_field(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or re.fullmatch(SHA256_PATTERN, value) is None:
        raise JobInputError("input.image_sha256: must be 64 lowercase hex digits")
    return value


def job_schema(
    input_model: type[BaseModel] | None = None, *, tasks: Iterable[str] | None = None
) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the job input the worker takes: the built-in job shape (its `task`
    limited to `tasks`, default the built-in ones), or `input_model`'s schema when the model has its own.

    Pure and torch-free: the relay imports it to check `POST /v1/jobs` before anything reaches RunPod. The
    resend job shape (`{"resend": ...}`) is internal to recovery and not part of it."""
    if input_model is not None:
        schema = input_model.model_json_schema(schema_generator=GenerateJsonSchema)
        schema.setdefault("title", input_model.__name__)
    else:
        schema = _Job.model_json_schema(schema_generator=GenerateJsonSchema)
        defs = schema.setdefault("$defs", {})
        defs["Item"] = _inline(Item.model_json_schema(ref_template="#/$defs/{model}"), defs)
        props = schema["properties"]
        props["task"] = {"title": "Task", "type": "string", "enum": sorted(set(tasks or TASKS))}
        props["items"] = {
            "title": "Items", "type": "array", "items": {"$ref": "#/$defs/Item"},
            "minItems": 1, "maxItems": Limits().max_items,
        }  # fmt: skip
        schema["title"] = "Job input"
        rules = _item_rules(set(props["task"]["enum"]))
        if rules:
            schema["allOf"] = rules
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


#: What each built-in task needs in every item (`_parse_item` checks the same): a non-empty string.
_NEEDS: Final = {"image-to-video": "image", "text-to-image": "prompt", "text-to-video": "prompt"}


def _item_rules(tasks: set[str]) -> list[dict[str, Any]]:
    """`if task is T then every item has a non-empty F`, as `allOf` entries, so a schema check (the relay's,
    `podstream submit`'s) names the item (`items[3]: 'image' is a required property`)."""
    rules = []
    for needed in sorted(set(_NEEDS.values())):
        names = sorted(task for task, field_ in _NEEDS.items() if field_ == needed and task in tasks)
        if names:
            item = {"required": [needed], "properties": {needed: {"type": "string", "minLength": 1}}}
            rules.append({
                "if": {"properties": {"task": {"enum": names}}, "required": ["task"]},
                "then": {"properties": {"items": {"items": item}}},
            })  # fmt: skip
    return rules


def _inline(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A sub-model's schema with its own `$defs` merged into the parent's."""
    defs.update(schema.pop("$defs", {}))
    return schema


class _Resend(_Strict):
    job: Annotated[str, Field(min_length=1, max_length=wire.MAX_ID_CHARS)]
    run: Annotated[str, Field(min_length=1, max_length=wire.MAX_ID_CHARS)] | None = None
    seqs: Annotated[list[Any], Field(max_length=100_000)] = []
    after: Annotated[int, Field(ge=0)] | None = None
    items: Annotated[list[Annotated[int, Field(ge=0, lt=wire.MAX_ITEMS)]], Field(max_length=100_000)] = []


@dataclass(frozen=True)
class Resend:
    """A resend job: yield again the envelopes of run `run` (default: the latest) of job `job` that are in
    `seqs`, above `after`, or of `items`."""

    job: str
    run: str | None
    seqs: frozenset[int]
    after: int | None
    items: frozenset[int]


def is_resend(raw: object) -> bool:
    return isinstance(raw, Mapping) and "resend" in raw


def parse_resend(raw: object) -> Resend:
    """Validate `{"resend": {"job", "run"?, "seqs"?: [n | [first, last]], "after"?, "items"?}}`."""
    if not isinstance(raw, Mapping) or set(raw) != {"resend"}:
        raise JobInputError("input: a resend job has only the key 'resend'")
    try:
        spec = _Resend.model_validate(raw["resend"])
    except ValidationError as exc:
        raise JobInputError(_describe(exc, "input.resend")) from None
    try:
        seqs = parse_seqs(spec.seqs)
    except ValueError as exc:
        raise JobInputError(f"input.resend.seqs: {exc}") from None
    if not seqs and spec.after is None and not spec.items:
        raise JobInputError("input.resend: give 'seqs', 'after' or 'items'")
    return Resend(spec.job, spec.run, seqs, spec.after, frozenset(spec.items))


def _parse_item(index: int, raw: object, task: str, limits: Limits) -> Item | ItemError:
    client_id = ""
    if isinstance(raw, Mapping) and isinstance(raw.get("id"), str):
        client_id = raw["id"][: wire.MAX_ID_CHARS]
    try:
        item = Item.model_validate(raw)
    except ValidationError as exc:
        return ItemError(index, client_id, "bad_item", _describe(exc, f"input.items[{index}]"))
    prefix = f"input.items[{index}]"
    if task == "image-to-video" and not item.image:
        return ItemError(index, item.id, "bad_item", f"{prefix}.image: required for image-to-video")
    if task != "image-to-video" and not item.prompt:
        return ItemError(index, item.id, "bad_item", f"{prefix}.prompt: required for {task}")
    for name in ("prompt", "negative_prompt"):
        text = getattr(item, name)
        if text is not None and len(text) > limits.max_prompt_chars:
            return ItemError(
                index,
                item.id,
                "prompt_too_long",
                f"{prefix}.{name}: {len(text)} characters, at most {limits.max_prompt_chars}",
            )
    if item.image is not None and len(item.image) > limits.max_image_bytes * 4 // 3 + 1024:
        return ItemError(
            index, item.id, "image_too_large", f"{prefix}.image: over {limits.max_image_bytes} bytes"
        )
    return item


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, int | float) else type(value).__name__)


def _describe(exc: ValidationError, root: str = "input") -> str:
    """The first validation error as `input.a.b: message` (plus a count of the others)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    path = root + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    elif first["type"] == "literal_error" and "expected" in first.get("ctx", {}):
        message = f"must be one of {first['ctx']['expected']}"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{path}: {message}{more}"


# ---- images


def parse_seqs(raw: Iterable[object], limit: int = 10_000_000) -> frozenset[int]:
    """Seqs from a list of ints and inclusive `[first, last]` ranges. Raises ValueError when malformed."""
    out: set[int] = set()
    for entry in raw:
        if type(entry) is int and entry >= 1:
            out.add(entry)
        elif (
            isinstance(entry, list)
            and len(entry) == 2
            and all(type(v) is int for v in entry)
            and 1 <= entry[0] <= entry[1]
        ):
            if entry[1] - entry[0] + 1 + len(out) > limit:
                raise ValueError(f"at most {limit} seqs per resend")
            out.update(range(entry[0], entry[1] + 1))
        else:
            raise ValueError(f"a seq is a positive integer or a [first, last] range, got {entry!r}")
        if len(out) > limit:
            raise ValueError(f"at most {limit} seqs per resend")
    return frozenset(out)
