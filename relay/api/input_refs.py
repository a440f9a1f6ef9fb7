"""A submitted job's images as references: what `POST /v1/jobs` does to `input.items[].image` before RunPod.

- `"input:<sha256>"` (the `ref` of `PUT /v1/inputs`): the submitting key must hold that input.
- An inline image (a data URL or bare base64) longer than `stage_inline_bytes`: staged here exactly as if
  it had been uploaded, then sent on as a reference, so curl users never meet RunPod's 10 MB cap either.
- Anything else (a short inline image, an http(s) URL) is forwarded as it is.

How a reference reaches the worker depends on who reads the job:
- the built-in worker (the relay checks the built-in input schema): the item keeps `image: "input:<sha256>"`
  and gets `image_sig`, its URL signature; the job gets one `inputs.url` template,
  `<relay>/v1/inputs/<owner>/{sha256}?exp=<exp>&sig={sig}`, shared by every item. About 150 bytes an image,
  so 1,000 images make a ~150 KB job; the worker fills the template in and checks the bytes it fetched
  against the sha256 in the reference.
- any other worker (its own schema, or none): the item gets a plain URL it can fetch (`image`) and
  `image_sha256`, the form every HTTP client understands.
The URLs are valid `input_url_ttl_s` (the job's queue time plus its execution timeout).

A reference to an input the key does not hold (never staged, expired, another key's) is `400 bad_input`
naming the item; nothing reaches RunPod. The job keeps the list of inputs it refers to (`held`), so the
retention sweep keeps them as long as the job.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from relay.api.inputs import InputHost, InputRefused, describe, stage_bytes
from relay.storage.input_store import REF_PREFIX, StagedInput, parse_ref


def rewrite(
    host: InputHost, owner: str, job_input: Mapping[str, Any], base: str, *, builtin: bool
) -> tuple[dict[str, Any], list[str]]:
    """The job input RunPod gets, and the inputs it refers to as `owner/sha256`. `builtin`: the job is
    for the built-in worker (compact references; inline images staged). Blocking (file or bucket calls):
    run it in a thread. Raises `InputRefused` naming the item."""
    items = job_input.get("items")
    if not isinstance(items, list):
        return dict(job_input), []
    limit = host.settings.stage_inline_bytes if builtin else 0
    # One expiry for the whole job: the items share one URL template.
    expires = (int(time.time() + host.settings.input_url_ttl_s) // 60 + 1) * 60
    out: list[Any] = []
    held: list[str] = []
    template: str | None = None
    for index, item in enumerate(items):
        image = item.get("image") if isinstance(item, Mapping) else None
        where = f"input.items[{index}].image"
        staged: StagedInput | None = None
        if isinstance(image, str) and image.startswith(REF_PREFIX):
            staged = _resolve(host, owner, image, where)
        elif (
            isinstance(image, str)
            and limit
            and len(image) > limit
            and not image.startswith(("http:", "https:"))
        ):
            try:
                staged = stage_bytes(host, owner, _decode(image, where))
            except InputRefused as exc:
                raise InputRefused(exc.status, exc.code, f"{where}: {exc}") from None
        if staged is None:
            out.append(item)
            continue
        assert isinstance(item, Mapping)
        claimed = item.get("image_sha256")
        if claimed is not None and claimed != staged.sha256:
            raise InputRefused(
                400, "bad_input", f"{where}: image_sha256 is not the sha256 of the staged input"
            )
        held.append(f"{owner}/{staged.sha256}")
        if not builtin:
            out.append({**item, "image": describe(host, staged, base)["url"], "image_sha256": staged.sha256})
            continue
        signed = host.auth.sign(staged.path, expires=expires)
        sig = parse_qs(urlsplit(signed).query).get("sig")
        compact = {k: v for k, v in item.items() if k not in ("image_sha256", "image_sig")}
        compact["image"] = staged.ref
        if sig:
            compact["image_sig"] = sig[0]
        out.append(compact)
        query = f"?exp={expires}&sig={{sig}}" if sig else ""  # none on an --insecure relay
        template = f"{base}/v1/inputs/{owner}/{{sha256}}{query}"
    rewritten = {**job_input, "items": out}
    if template is not None:
        rewritten["inputs"] = {"url": template}
    return rewritten, sorted(set(held))


def _resolve(host: InputHost, owner: str, ref: str, where: str) -> StagedInput:
    sha256 = parse_ref(ref)
    if sha256 is None:
        raise InputRefused(
            400, "bad_input", f"{where}: a reference is input:<the image's sha256, 64 hex digits>"
        )
    staged = host.inputs.stat(owner, sha256, touch=True)
    if staged is None:
        hours = host.settings.input_ttl_s / 3600
        raise InputRefused(
            400, "bad_input",
            f"{where}: this key holds no input {sha256} (stage it with PUT /v1/inputs first; "
            f"inputs no job refers to expire {hours:g} h after they were staged)",
        )  # fmt: skip
    return staged


def _decode(image: str, where: str) -> bytes:
    payload = image
    if image.startswith("data:"):
        header, sep, payload = image.partition(",")
        if not sep or ";base64" not in header:
            raise InputRefused(
                400, "bad_input", f"{where}: a data URL image must be base64 (data:image/...;base64,...)"
            )
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InputRefused(
            400, "bad_input", f"{where}: neither an http(s) URL, an input: reference nor base64"
        ) from None
