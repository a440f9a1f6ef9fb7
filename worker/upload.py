"""Direct upload delivery: the worker PUTs a file out of band and streams only a small `ref` envelope.

Where (`PODSTREAM_UPLOAD_URL`):

- **the relay**: `https://relay.example` (or `.../v1/uploads`). Each file goes to
  `PUT {base}/v1/uploads/{job}/{item}` with `Authorization: Bearer $PODSTREAM_UPLOAD_KEY` (an API key with the
  `upload` scope) and `X-Podstream-Sha256: <hex>`; the relay streams it to disk, checks the digest and answers
  `{"url": ...}`, which goes into the `ref`. When the `ref` arrives through the stream the relay journals the
  item exactly like a streamed one.
- **S3-compatible storage**: `s3://bucket/prefix`. The worker presigns a PUT for
  `prefix/<job>/<item>-<sha256[:16]>` with botocore (credentials from the usual `AWS_*` variables, endpoint
  `AWS_ENDPOINT_URL` or `PODSTREAM_S3_ENDPOINT_URL`, region `AWS_REGION` / `PODSTREAM_S3_REGION`), PUTs it and
  puts a presigned GET valid `PODSTREAM_UPLOAD_URL_TTL_S` (1 hour) into the `ref`.

Retries: up to `attempts` tries on connection errors, timeouts, 408, 429 and 5xx, waiting between them as
every retry loop of podstream does (`podstream.backoff`: exponential backoff from `backoff_s`, full jitter,
at least the `Retry-After` a 429 or 503 asks for); any other answer fails at once (a bad key, a digest
mismatch, a file over the relay's cap will not get better).
`UploadFailed` then makes the handler stream the item's parts instead: nothing is lost.

Which items are uploaded is the job's `delivery` option: `stream` (never), `upload` (always, when a target is
configured) or `auto` (files of at least `PODSTREAM_UPLOAD_THRESHOLD_BYTES`, 8 MiB by default).
"""

from __future__ import annotations

import importlib
import logging
import os
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import httpx

from podstream import wire
from podstream.backoff import Backoff, retry_after_seconds

log = logging.getLogger("worker.upload")

SHA256_HEADER: Final = "X-Podstream-Sha256"
DEFAULT_THRESHOLD_BYTES: Final = 8 * 1024 * 1024
_RETRY_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})
Delivery = Literal["stream", "upload", "auto"]


class UploadFailed(Exception):
    """An upload did not succeed after its retries (or failed for good at once); the item is streamed."""


@dataclass(frozen=True)
class UploadConfig:
    """The upload target and its knobs; `from_env` reads `PODSTREAM_UPLOAD_*` (and the S3 variables)."""

    url: str = ""  # empty: no target, every item is streamed
    key: str = ""
    threshold_bytes: int = DEFAULT_THRESHOLD_BYTES
    attempts: int = 3
    backoff_s: float = 0.5  # the first retry waits up to this long, each next one up to twice as long
    backoff_cap_s: float = 30.0
    timeout_s: float = 120.0
    url_ttl_s: int = 3600
    s3_endpoint: str = ""
    s3_region: str = ""

    def __post_init__(self) -> None:
        if self.url and not self.url.startswith(("http://", "https://", "s3://")):
            raise ValueError(f"PODSTREAM_UPLOAD_URL must be an http(s):// or s3:// URL, got {self.url!r}")
        if self.attempts < 1:
            raise ValueError("PODSTREAM_UPLOAD_ATTEMPTS must be at least 1")

    @property
    def configured(self) -> bool:
        return bool(self.url)

    def wants(self, delivery: str, size: int) -> bool:
        """Whether an item of `size` bytes of a job asking for `delivery` is uploaded."""
        if not self.configured:
            return False
        return delivery == "upload" or (delivery == "auto" and size >= self.threshold_bytes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> UploadConfig:
        def get(name: str, default: str = "") -> str:
            return environ.get(name) or default

        try:
            return cls(
                url=get("PODSTREAM_UPLOAD_URL"),
                key=get("PODSTREAM_UPLOAD_KEY"),
                threshold_bytes=int(get("PODSTREAM_UPLOAD_THRESHOLD_BYTES", str(DEFAULT_THRESHOLD_BYTES))),
                attempts=int(get("PODSTREAM_UPLOAD_ATTEMPTS", "3")),
                backoff_s=float(get("PODSTREAM_UPLOAD_BACKOFF_S", "0.5")),
                timeout_s=float(get("PODSTREAM_UPLOAD_TIMEOUT_S", "120")),
                url_ttl_s=int(get("PODSTREAM_UPLOAD_URL_TTL_S", "3600")),
                s3_endpoint=get(
                    "PODSTREAM_S3_ENDPOINT_URL", get("AWS_ENDPOINT_URL_S3", get("AWS_ENDPOINT_URL"))
                ),
                s3_region=get(
                    "PODSTREAM_S3_REGION", get("AWS_REGION", get("AWS_DEFAULT_REGION", "us-east-1"))
                ),
            )
        except ValueError as exc:
            raise ValueError(f"upload settings: {exc}") from None


@dataclass(frozen=True)
class _Put:
    url: str
    headers: dict[str, str]
    ref_url: str  # empty: read it from the answer


class Uploader:
    """Uploads one file at a time (it is called from the handler's encode thread)."""

    def __init__(
        self,
        config: UploadConfig,
        *,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if not config.configured:
            raise ValueError("no upload target configured (PODSTREAM_UPLOAD_URL)")
        self.config = config
        self._client = client or httpx.Client(timeout=httpx.Timeout(config.timeout_s, connect=10.0))
        self._sleep = sleep
        self._rng = rng
        self._backoff = Backoff(base_s=config.backoff_s, cap_s=max(config.backoff_cap_s, config.backoff_s))
        self._s3: Any = None
        self.requests = 0

    def close(self) -> None:
        self._client.close()

    def upload(self, job: str, item: int, data: bytes, *, mime: str, sha256: str) -> str:
        """PUT the file; returns the URL for its `ref`. Raises `UploadFailed` after the last attempt."""
        put = self._prepare(job, item, mime, sha256)
        last = ""
        retry_after: float | None = None
        for attempt in range(self.config.attempts):
            if attempt:
                self._sleep(self._backoff.delay(attempt - 1, self._rng, retry_after=retry_after))
            self.requests += 1
            retry_after = None
            try:
                response = self._client.put(put.url, content=data, headers=put.headers)
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
                log.warning("job %s item %d: upload attempt %d failed: %s", job, item, attempt + 1, last)
                continue
            if response.status_code < 300:
                return put.ref_url or self._answered_url(response)
            last = f"HTTP {response.status_code}: {response.text[:200].strip()}"
            log.warning("job %s item %d: upload attempt %d answered %s", job, item, attempt + 1, last)
            if response.status_code not in _RETRY_STATUS:
                break
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
        raise UploadFailed(f"uploading item {item} failed: {last}")

    def _answered_url(self, response: httpx.Response) -> str:
        try:
            url = response.json().get("url")
        except (ValueError, AttributeError):
            url = None
        if (
            not isinstance(url, str)
            or not url.startswith(("http://", "https://"))
            or len(url) > wire.MAX_URL_CHARS
        ):
            raise UploadFailed("the upload target answered without a usable 'url'")
        return url

    # ---- targets

    def _prepare(self, job: str, item: int, mime: str, sha256: str) -> _Put:
        if self.config.url.startswith("s3://"):
            return self._s3_put(job, item, mime, sha256)
        base = self.config.url.rstrip("/")
        if not base.endswith("/v1/uploads"):
            base += "/v1/uploads"
        headers = {SHA256_HEADER: sha256, "Content-Type": mime or "application/octet-stream"}
        if self.config.key:
            headers["Authorization"] = f"Bearer {self.config.key}"
        return _Put(f"{base}/{urllib.parse.quote(job, safe='')}/{int(item)}", headers, "")

    def _s3_put(self, job: str, item: int, mime: str, sha256: str) -> _Put:
        parsed = urllib.parse.urlsplit(self.config.url)
        bucket, prefix = parsed.netloc, parsed.path.strip("/")
        if not bucket:
            raise UploadFailed(f"no bucket in {self.config.url!r}")
        name = f"{urllib.parse.quote(job, safe='')}/{int(item):05d}-{sha256[:16]}"
        key = f"{prefix}/{name}" if prefix else name
        client = self._s3_client()
        content_type = mime or "application/octet-stream"
        try:
            put_url: str = client.generate_presigned_url(
                "put_object",
                Params={"Bucket": bucket, "Key": key, "ContentType": content_type},
                ExpiresIn=max(60, int(self.config.timeout_s * self.config.attempts) + 60),
            )
            get_url: str = client.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.config.url_ttl_s
            )
        except Exception as exc:  # botocore: no credentials, bad region, ...
            raise UploadFailed(f"cannot presign the S3 upload: {exc}") from None
        if len(get_url) > wire.MAX_URL_CHARS:
            raise UploadFailed("the presigned GET URL is too long for a ref")
        return _Put(put_url, {"Content-Type": content_type}, get_url)

    def _s3_client(self) -> Any:
        if self._s3 is None:
            try:  # botocore (the worker extra); imported only for s3:// targets
                session_module: Any = importlib.import_module("botocore.session")
                config_module: Any = importlib.import_module("botocore.config")
            except ImportError:
                raise UploadFailed("s3:// upload targets need botocore (pip install boto3)") from None
            self._s3 = session_module.get_session().create_client(
                "s3",
                region_name=self.config.s3_region or "us-east-1",
                endpoint_url=self.config.s3_endpoint or None,
                config=config_module.Config(signature_version="s3v4", s3={"addressing_style": "path"}),
            )
        return self._s3
