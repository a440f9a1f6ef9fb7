"""Stage local images on a relay (`PUT /v1/inputs`), so that a job names them as `input:<sha256>`.

    uploaded = upload_inputs(["cat.png", "dog.jpg"], relay=relay, key=key, workers=4)
    job_input = podstream.submit.build_input(images=uploaded)  # {"id": "cat", "image": "input:<sha256>"}

A job then carries a few bytes per image instead of the image, so a batch of any size fits RunPod's 10 MB
`/run` cap; the relay hands the worker a signed URL for each (docs/relay.md). Per file: read and hash it
(streamed, never whole in memory), `HEAD /v1/inputs/<sha256>` (200: this key already holds it, nothing is
sent), else `PUT /v1/inputs` with `X-Podstream-Sha256` and the file streamed as the body. Files are read
and checked (an image by its magic bytes, as the relay checks) before anything is sent, so a wrong file
costs no upload; identical files are uploaded once.

Network errors, 408, 429, 500, 502, 503 and 504 are retried with backoff (`podstream.backoff`, honouring
`Retry-After`); any other 4xx or 5xx is final. Errors are one line naming the file: `InputError` (from
`podstream.submit`) for the file itself (unreadable, not an image, over the relay's size limit),
`TransferError` for everything else (relay unreachable, key refused, quota full, retries exhausted). The
first error stops the batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

from podstream.backoff import Backoff, retry_after_seconds
from podstream.images import HEAD_BYTES, sniff
from podstream.progress import TransferError, UploadProgress, human_bytes
from podstream.submit import InputError, relay_error_text
from podstream.watcher import http_url

CHUNK_BYTES: Final = 256 * 1024
DEFAULT_WORKERS: Final = 4
#: Tries of one file (its HEAD and PUT) before `TransferError`.
DEFAULT_ATTEMPTS: Final = 4
DEFAULT_BACKOFF: Final = Backoff(base_s=0.5, cap_s=8.0)
TIMEOUT: Final = httpx.Timeout(60.0, connect=10.0)


@dataclass(frozen=True)
class LocalInput:
    """A local image, read and checked: its size, type (by magic bytes) and sha256."""

    path: Path
    sha256: str
    bytes: int
    mime: str

    @property
    def ref(self) -> str:
        """What a job's item names it by once uploaded: `input:<sha256>`."""
        return f"input:{self.sha256}"


@dataclass(frozen=True)
class UploadedInput:
    """A file the relay holds for this key. `skipped`: it already did (HEAD hit), nothing was sent.

    `url` and `expires_at` (the signed URL the worker fetches) come with an upload's answer, not a skip."""

    path: Path
    ref: str
    sha256: str
    bytes: int
    skipped: bool
    url: str | None = None
    expires_at: float | None = None


def read_input(path: str | Path) -> LocalInput:
    """Read and check one local image (streamed); `InputError` naming it if it cannot be read or is not a
    PNG, JPEG, WebP, GIF or BMP."""
    path = Path(path)
    digest = hashlib.sha256()
    size = 0
    head = b""
    try:
        with path.open("rb") as file:
            while chunk := file.read(CHUNK_BYTES):
                if not head:
                    head = chunk[:HEAD_BYTES]
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from None
    mime = sniff(head)
    if mime is None:
        raise InputError(f"{path} does not look like an image (PNG, JPEG, WebP, GIF or BMP)")
    return LocalInput(path, digest.hexdigest(), size, mime)


def upload_inputs(
    sources: Iterable[str | Path | LocalInput],
    *,
    relay: str,
    key: str | None = None,
    workers: int = DEFAULT_WORKERS,
    progress: Callable[[UploadProgress], None] | None = None,
    attempts: int = DEFAULT_ATTEMPTS,
    backoff: Backoff = DEFAULT_BACKOFF,
    client: httpx.Client | None = None,
) -> list[UploadedInput]:
    """Upload local images to the relay's input store, `workers` at a time; one `UploadedInput` per
    source, in order. Every file is read and checked first. `progress` is called from the upload threads,
    one call at a time. `key`: an API key with scope jobs:write, or an input token (None: an --insecure
    relay)."""
    if workers < 1 or attempts < 1:
        raise ValueError("workers and attempts must be at least 1")
    try:
        base = http_url(relay)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    local = [source if isinstance(source, LocalInput) else read_input(source) for source in sources]
    distinct: dict[str, LocalInput] = {}
    for item in local:
        distinct.setdefault(item.sha256, item)  # identical files: one upload, under the first one's name
    batch = _Batch(base, key, attempts, backoff, _Tally(list(distinct.values()), progress))
    batch.tally.report()
    with contextlib.ExitStack() as stack:
        http = client or stack.enter_context(httpx.Client(timeout=TIMEOUT))
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload"))
        futures = {sha: pool.submit(batch.upload, http, item) for sha, item in distinct.items()}
        try:
            done, _ = wait(futures.values(), return_when=FIRST_EXCEPTION)
        except BaseException:  # Ctrl-C: the threads stop too, at their next chunk
            batch.stop.set()
            for future in futures.values():
                future.cancel()
            raise
        if any(future.exception() is not None for future in done):
            for future in futures.values():  # queued ones never start; those in flight stop at once
                future.cancel()
            wait(futures.values())
            raise _first_failure(futures.values())
    results = {sha: future.result() for sha, future in futures.items()}
    return [_for_path(results[item.sha256], item.path) for item in local]


def _first_failure(futures: Iterable[Future[UploadedInput]]) -> BaseException:
    """The failure of the earliest file of the batch that failed (not one stopped because another did)."""
    for future in futures:
        error = None if future.cancelled() else future.exception()
        if error is not None and not isinstance(error, _Stopped):
            return error
    raise AssertionError("a batch stopped without a failure")


def _for_path(result: UploadedInput, path: Path) -> UploadedInput:
    return result if result.path == path else dataclasses.replace(result, path=path)


class _Stopped(Exception):
    """Another file of the batch failed: this one stops."""


class _Tally:
    """The batch's progress, updated from the upload threads under one lock."""

    def __init__(
        self, files: Sequence[LocalInput], callback: Callable[[UploadProgress], None] | None
    ) -> None:
        self._lock = threading.Lock()
        self._callback = callback
        self._state = UploadProgress(len(files), 0, 0, sum(f.bytes for f in files), 0)

    def report(self, *, sent: int = 0, done: int = 0, skipped: LocalInput | None = None) -> None:
        with self._lock:
            s = self._state
            held = 0 if skipped is None else skipped.bytes
            self._state = UploadProgress(
                s.files,
                s.files_done + done,
                s.skipped + (skipped is not None),
                s.bytes - held,
                s.bytes_done + sent,
            )
            if self._callback is not None:
                self._callback(self._state)


class _Batch:
    """What every upload of one batch shares: the relay, the key, the retry policy, progress, stop."""

    def __init__(self, base: str, key: str | None, attempts: int, backoff: Backoff, tally: _Tally) -> None:
        self.base = base
        self.key = key
        self.attempts = attempts
        self.backoff = backoff
        self.tally = tally
        self.stop = threading.Event()
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}

    def upload(self, http: httpx.Client, item: LocalInput) -> UploadedInput:
        """HEAD, then PUT unless the relay holds it; retried on network errors and passing answers. A
        failure stops the batch: the files after it do not start."""
        try:
            return self._upload(http, item)
        except BaseException:
            self.stop.set()
            raise

    def _upload(self, http: httpx.Client, item: LocalInput) -> UploadedInput:
        reason = ""
        retry_after: float | None = None
        for attempt in range(self.attempts):
            if attempt and self.stop.wait(self.backoff.delay(attempt - 1, retry_after=retry_after)):
                raise _Stopped()
            sent = [0]
            try:
                answer = self._try(http, item, sent)
            except httpx.TransportError as exc:
                reason, retry_after = f"{type(exc).__name__} {exc}".rstrip(), None
            else:
                if isinstance(answer, UploadedInput):
                    return answer
                reason = f"HTTP {answer.status_code}" + (
                    f" {relay_error_text(answer)}" if answer.content else ""
                )
                retry_after = retry_after_seconds(answer.headers.get("retry-after"))
            self.tally.report(sent=-sent[0])  # those bytes go again
        if reason.startswith("ConnectError"):
            raise TransferError(f"cannot reach the relay at {self.base} (uploading {item.path}): {reason}")
        raise TransferError(
            f"uploading {item.path} to the relay at {self.base}: {reason} (after {self.attempts} tries)"
        )

    def _try(self, http: httpx.Client, item: LocalInput, sent: list[int]) -> UploadedInput | httpx.Response:
        """One try: the file's upload, or an answer worth retrying; raises for a refusal."""
        if self.stop.is_set():
            raise _Stopped()
        head = http.head(f"{self.base}/v1/inputs/{item.sha256}", headers=self._auth)
        if head.status_code == 200:
            self.tally.report(done=1, skipped=item)
            return UploadedInput(item.path, item.ref, item.sha256, item.bytes, skipped=True)
        if head.status_code in (401, 403):  # HEAD has no body: the GET says why
            why = http.get(f"{self.base}/v1/inputs/{item.sha256}", headers=self._auth)
            raise self._refusal(why if why.status_code == head.status_code else head, item)
        if head.status_code != 404:
            if _retryable(head.status_code):
                return head
            raise self._refusal(head, item)
        if self.stop.is_set():
            raise _Stopped()
        headers = {
            **self._auth,
            "X-Podstream-Sha256": item.sha256,
            "Content-Type": item.mime,
            "Content-Length": str(item.bytes),
        }
        response = http.put(f"{self.base}/v1/inputs", content=self._chunks(item, sent), headers=headers)
        if response.status_code in (200, 201):
            self.tally.report(done=1)
            return _uploaded(response, item)
        if _retryable(response.status_code):
            return response
        raise self._refusal(response, item)

    def _chunks(self, item: LocalInput, sent: list[int]) -> Iterator[bytes]:
        """The file as the PUT body, in chunks, counted as they go: the `bytes` it was read with."""
        left = item.bytes
        try:
            with item.path.open("rb") as file:
                while left > 0:
                    if self.stop.is_set():
                        raise _Stopped()
                    chunk = file.read(min(CHUNK_BYTES, left))
                    if not chunk:
                        raise InputError(f"{item.path} changed while it was being uploaded: try again")
                    left -= len(chunk)
                    sent[0] += len(chunk)
                    self.tally.report(sent=len(chunk))
                    yield chunk
        except OSError as exc:
            raise InputError(f"cannot read image {item.path}: {exc.strerror or exc}") from None

    def _refusal(self, response: httpx.Response, item: LocalInput) -> Exception:
        """The relay's 4xx for `item` as one line naming the file."""
        status = response.status_code
        detail = relay_error_text(response) if response.content else ""
        answer = f"HTTP {status}" + (f" {detail}" if detail else "")
        name = str(item.path)
        if status in (401, 403):
            hint = "" if self.key else " (no key given: --key or PODSTREAM_API_KEY)"
            return TransferError(f"the relay refused the API key uploading {name} ({answer}){hint}")
        if status == 413:
            return InputError(
                f"{name} is {human_bytes(item.bytes)}, over the relay's limit for one image ({answer})"
            )
        if status == 415:
            return InputError(
                f"{name} is not an image the relay takes: PNG, JPEG, WebP, GIF or BMP ({answer})"
            )
        if status == 422:
            return InputError(f"{name} changed while it was being uploaded ({answer}): try again")
        if status == 507:
            return TransferError(f"{name} does not fit in this key's input quota on the relay ({answer})")
        if status in (404, 405) and response.request.method == "PUT":
            return TransferError(
                f"the relay at {self.base} does not take image uploads (PUT /v1/inputs: {answer}): "
                "is it older than this client?"
            )
        return TransferError(f"uploading {name}: the relay answered {answer}")


def _retryable(status: int) -> bool:
    """A passing condition: busy, restarting, a gateway in between. Not 507 (quota) nor 501."""
    return status in (408, 429, 500, 502, 503, 504)


def _uploaded(response: httpx.Response, item: LocalInput) -> UploadedInput:
    """The relay's answer to a PUT, checked against what was sent."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or answer.get("sha256") != item.sha256:
        raise TransferError(f"uploading {item.path}: unexpected answer from the relay: {response.text[:200]}")
    url = answer.get("url") if isinstance(answer.get("url"), str) else None
    expires = answer.get("expires_at")
    expires_at = float(expires) if isinstance(expires, (int, float)) else None
    return UploadedInput(item.path, item.ref, item.sha256, item.bytes, False, url, expires_at)
