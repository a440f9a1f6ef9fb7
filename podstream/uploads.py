"""Stage local images on a relay (`PUT /v1/inputs`), so that a job names them as `input:<sha256>`.

    uploaded = upload_inputs(["cat.png", "dog.jpg"], relay=relay, key=key, workers=4)
    job_input = podstream.submit.build_input(images=uploaded)  # {"id": "cat", "image": "input:<sha256>"}

A job then carries a few bytes per image instead of the image, so a batch of any size fits RunPod's 10 MB
`/run` cap; the relay hands the worker a signed URL for each (docs/relay.md). Every file is first checked
(readable, an image by its magic bytes, as the relay checks), so a wrong file costs no upload. Then, overlapped:
the files are hashed in `workers` threads; their sha256 go to the relay in batches, `POST /v1/inputs/lookup`
(up to 1,000 a request, sent whenever the uploads run short of files: those this key holds already are not
sent), and each missing file is sent as it is found missing, `PUT /v1/inputs` with `X-Podstream-Sha256`,
`workers` at a time. A file up to `KEEP_BYTES` is read once, its bytes kept from its hash to its upload (up to
`KEEP_BUDGET` of them at once); a larger one is hashed streamed and read again, streamed, for its upload, so
no file is ever held whole in memory beyond those. Identical files are uploaded once. A relay without the lookup route (older
than this client: 404 or 405 on it) is asked per file, `GET /v1/inputs/<sha256>`, before its `PUT`.

Network errors, 408, 429, 500, 502, 503 and 504 are retried with backoff (`podstream.backoff`, honouring
`Retry-After`); a retried upload asks the relay first whether the failed try landed. Any other 4xx or 5xx is
final. Errors are one line naming the file: `InputError` (from `podstream.submit`) for the file itself
(unreadable, not an image, over the relay's size limit), `TransferError` for everything else (relay
unreachable, key refused, quota full, retries exhausted). The first error stops the batch.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx

from podstream.backoff import Backoff, retry_after_seconds
from podstream.images import HEAD_BYTES, sniff
from podstream.progress import TransferError, UploadProgress, human_bytes
from podstream.submit import InputError, relay_error_text
from podstream.watcher import http_url

CHUNK_BYTES: Final = 256 * 1024
DEFAULT_WORKERS: Final = 4
#: The most sha256 one `POST /v1/inputs/lookup` asks about (the relay's limit).
LOOKUP_MAX: Final = 1000
#: A file up to this size is read once: hashed, and kept in memory until it is uploaded (or found held)...
KEEP_BYTES: Final = 8 << 20
#: ...while the files kept add up to no more than this; the others are read again for their upload.
KEEP_BUDGET: Final = 64 << 20
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


def hash_input(path: Path, *, keep: bool) -> tuple[LocalInput, bytes | None]:
    """`read_input`, and with `keep` (a small file) its bytes too, read at once: what its upload sends."""
    if not keep:
        return read_input(path), None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from None
    mime = sniff(data[:HEAD_BYTES])
    if mime is None:
        raise InputError(f"{path} does not look like an image (PNG, JPEG, WebP, GIF or BMP)")
    return LocalInput(path, hashlib.sha256(data).hexdigest(), len(data), mime), data


def check_input(path: str | Path) -> tuple[Path, int, str]:
    """What `read_input` checks, without reading the file through: (path, size, mime) from its first bytes;
    `InputError` naming it if it cannot be read or is not a PNG, JPEG, WebP, GIF or BMP."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            head = file.read(HEAD_BYTES)
            size = os.fstat(file.fileno()).st_size
    except OSError as exc:
        raise InputError(f"cannot read image {path}: {exc.strerror or exc}") from None
    mime = sniff(head)
    if mime is None:
        raise InputError(f"{path} does not look like an image (PNG, JPEG, WebP, GIF or BMP)")
    return path, size, mime


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
    source, in order. Every file is checked first; hashing, lookups and uploads then overlap (the module
    docstring). `progress` is called from the upload threads, one call at a time. `key`: an API key with
    scope jobs:write, or an input token (None: an --insecure relay)."""
    if workers < 1 or attempts < 1:
        raise ValueError("workers and attempts must be at least 1")
    try:
        base = http_url(relay)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    checked: dict[Path, LocalInput | tuple[Path, int, str]] = {}  # the same path twice: one file
    order: list[Path] = []
    for source in sources:
        path = source.path if isinstance(source, LocalInput) else Path(source)
        order.append(path)
        if path not in checked:
            checked[path] = source if isinstance(source, LocalInput) else check_input(path)
    sizes = [entry.bytes if isinstance(entry, LocalInput) else entry[1] for entry in checked.values()]
    tally = _Tally(len(checked), sum(sizes), progress)
    batch = _Batch(base, key, attempts, backoff, tally, workers)
    tally.report()
    with contextlib.ExitStack() as stack:
        http = client or stack.enter_context(httpx.Client(timeout=TIMEOUT))
        hashing = stack.enter_context(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="hash"))
        uploads = stack.enter_context(ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload"))
        run = _Run(batch, http, hashing, uploads)
        try:
            by_path = run.go(list(checked.values()))
        except BaseException:  # the first failure, or Ctrl-C: the threads stop too, at their next chunk
            batch.stop.set()
            run.cancel()
            raise
    return [_for_path(by_path[path], path) for path in order]


def _for_path(result: UploadedInput, path: Path) -> UploadedInput:
    return result if result.path == path else dataclasses.replace(result, path=path)


class _Stopped(Exception):
    """Another file of the batch failed: this one stops."""


class _Tally:
    """The batch's progress, updated from the upload threads under one lock."""

    def __init__(self, files: int, total: int, callback: Callable[[UploadProgress], None] | None) -> None:
        self._lock = threading.Lock()
        self._callback = callback
        self._state = UploadProgress(files, 0, 0, total, 0)

    def report(
        self,
        *,
        sent: int = 0,
        done: int = 0,
        skipped: LocalInput | None = None,
        files: int = 0,
        total: int = 0,
    ) -> None:
        """`files`, `total`: changes of what there is to send (a file found to be a copy of another)."""
        with self._lock:
            s = self._state
            held = 0 if skipped is None else skipped.bytes
            self._state = UploadProgress(
                s.files + files,
                s.files_done + done,
                s.skipped + (skipped is not None),
                s.bytes - held + total,
                s.bytes_done + sent,
            )
            if self._callback is not None:
                self._callback(self._state)


class _Run:
    """One batch's files through hashing, lookups and uploads. `go` runs in the calling thread: it starts
    every file's hash, sends each lookup as soon as the uploads run short of files (or 1,000 sha256 are
    waiting, or nothing is left to hash), and starts each missing file's upload."""

    def __init__(
        self, batch: _Batch, http: httpx.Client, hashing: ThreadPoolExecutor, uploads: ThreadPoolExecutor
    ) -> None:
        self.batch = batch
        self.http = http
        self.hashing = hashing
        self.uploads = uploads
        self.futures: list[Future[Any]] = []
        self._events: queue.SimpleQueue[Future[Any]] = queue.SimpleQueue()

    def go(self, files: list[LocalInput | tuple[Path, int, str]]) -> dict[Path, UploadedInput]:
        batch = self.batch
        first: dict[str, LocalInput] = {}  # by sha256: the file uploaded for those bytes
        sha_of: dict[Path, str] = {}
        results: dict[str, UploadedInput] = {}
        ready: list[LocalInput] = []  # hashed, not looked up yet
        to_hash = collections.deque(entry for entry in files if not isinstance(entry, LocalInput))
        hashes: dict[Future[Any], tuple[int, bool]] = {}  # a file's hash -> its size when checked, kept
        uploading: dict[Future[Any], LocalInput] = {}
        kept: dict[str, bytes] = {}  # the bytes of small files read by their hash, until uploaded or held
        kept_bytes = 0  # of `kept`, and of the small files being hashed

        def hashed(item: LocalInput, data: bytes | None = None) -> None:
            nonlocal kept_bytes
            sha_of[item.path] = item.sha256
            if item.sha256 in first:  # a copy of another file: its upload is that one's
                batch.tally.report(files=-1, total=-item.bytes)
            else:
                first[item.sha256] = item
                ready.append(item)
                if data is not None:
                    kept[item.sha256] = data
                    kept_bytes += len(data)

        def forget(item: LocalInput) -> None:
            nonlocal kept_bytes
            data = kept.pop(item.sha256, None)
            kept_bytes -= 0 if data is None else len(data)

        def hash_more() -> None:
            """Hash every file left (the pool runs `workers` at a time); keep those that fit in memory."""
            nonlocal kept_bytes
            while to_hash:
                path, size, _mime = to_hash.popleft()
                keep = size <= KEEP_BYTES and kept_bytes + size <= KEEP_BUDGET
                kept_bytes += size if keep else 0
                hashes[self._start(self.hashing, hash_input, path, keep=keep)] = (size, keep)

        for entry in files:
            if isinstance(entry, LocalInput):
                hashed(entry)
        hash_more()
        while to_hash or hashes or ready or uploading:
            if ready and (not hashes or len(ready) >= LOOKUP_MAX or len(uploading) < batch.workers):
                looking, ready = ready[:LOOKUP_MAX], ready[LOOKUP_MAX:]
                try:
                    answer = batch.held(self.http, looking)
                except _Stopped:  # an upload failed while this lookup waited to retry: its failure is next
                    continue
                for item in looking:
                    if answer is not None and item.sha256 in answer:
                        results[item.sha256] = answer[item.sha256]
                        batch.tally.report(done=1, skipped=item)
                        forget(item)
                    else:
                        data = kept.get(item.sha256)
                        uploading[self._start(self.uploads, batch.upload, self.http, item, data)] = item
                hash_more()
                continue
            for future in self._finished():
                if future in hashes:
                    size, keep = hashes.pop(future)
                    kept_bytes -= size if keep else 0
                    item, data = future.result()  # InputError: the file could not be read (again)
                    if item.bytes != size:  # it changed since it was checked: count what will go
                        batch.tally.report(total=item.bytes - size)
                    hashed(item, data)
                else:
                    forget(uploading.pop(future))
                    if isinstance(future.exception(), _Stopped):
                        continue  # stopped by another file's failure, which is on its way here
                    result = future.result()
                    results[result.sha256] = result
            hash_more()
        return {path: results[sha] for path, sha in sha_of.items()}

    def _start(
        self, pool: ThreadPoolExecutor, function: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Future[Any]:
        future = pool.submit(function, *args, **kwargs)
        self.futures.append(future)
        future.add_done_callback(self._events.put)
        return future

    def _finished(self) -> list[Future[Any]]:
        """The hashes and uploads done since last asked (waiting for one): all of them, so that a lookup
        takes every file hashed meanwhile."""
        done = [self._events.get()]
        with contextlib.suppress(queue.Empty):
            while True:
                done.append(self._events.get_nowait())
        return done

    def cancel(self) -> None:
        """Queued work never starts; what runs stops at its next chunk (`stop` is set)."""
        for future in self.futures:
            future.cancel()


class _Batch:
    """What every upload of one batch shares: the relay, the key, the retry policy, progress, stop."""

    def __init__(
        self, base: str, key: str | None, attempts: int, backoff: Backoff, tally: _Tally, workers: int
    ) -> None:
        self.base = base
        self.key = key
        self.attempts = attempts
        self.backoff = backoff
        self.tally = tally
        self.workers = workers
        self.stop = threading.Event()
        #: Whether the relay has `POST /v1/inputs/lookup` (False once it answered 404 or 405 there).
        self.lookups = True
        self._auth = {"Authorization": f"Bearer {key}"} if key else {}

    def held(self, http: httpx.Client, items: Sequence[LocalInput]) -> dict[str, UploadedInput] | None:
        """Which of `items` (up to `LOOKUP_MAX`) the relay holds for this key, by sha256 (`POST
        /v1/inputs/lookup`, retried as uploads are); None when the relay has no such route (then each upload
        asks for its own file first)."""
        if not self.lookups:
            return None
        reason = ""
        retry_after: float | None = None
        body = {"sha256": [item.sha256 for item in items]}
        for attempt in range(self.attempts):
            if attempt and self.stop.wait(self.backoff.delay(attempt - 1, retry_after=retry_after)):
                raise _Stopped()
            try:
                response = http.post(f"{self.base}/v1/inputs/lookup", json=body, headers=self._auth)
            except httpx.TransportError as exc:
                reason, retry_after = f"{type(exc).__name__} {exc}".rstrip(), None
                continue
            if response.status_code == 200:
                return self._held(response, items)
            if response.status_code in (404, 405):  # older than the route: a look per file
                self.lookups = False
                return None
            if response.status_code in (401, 403):
                raise self._refusal(response, items[0])
            if not _retryable(response.status_code):
                raise TransferError(
                    f"asking the relay at {self.base} which of {len(items)} image(s) it holds: the relay "
                    f"answered HTTP {response.status_code} {relay_error_text(response)}".rstrip()
                )
            reason = f"HTTP {response.status_code}" + (
                f" {relay_error_text(response)}" if response.content else ""
            )
            retry_after = retry_after_seconds(response.headers.get("retry-after"))
        if reason.startswith("ConnectError"):
            raise TransferError(
                f"cannot reach the relay at {self.base} (uploading {items[0].path}): {reason}"
            )
        raise TransferError(
            f"asking the relay at {self.base} which of {len(items)} image(s) it holds (the first "
            f"{items[0].path}): {reason} (after {self.attempts} tries)"
        )

    def _held(self, response: httpx.Response, items: Sequence[LocalInput]) -> dict[str, UploadedInput]:
        try:
            answer = response.json()
        except ValueError:
            answer = None
        held = answer.get("held") if isinstance(answer, dict) else None
        if not isinstance(held, dict):
            raise TransferError(
                f"asking the relay at {self.base} which images it holds: unexpected answer: {response.text[:200]}"
            )
        found = {}
        for item in items:
            entry = held.get(item.sha256)
            if isinstance(entry, dict):
                found[item.sha256] = _described(entry, item, skipped=True)
        return found

    def upload(self, http: httpx.Client, item: LocalInput, data: bytes | None = None) -> UploadedInput:
        """PUT the file (asking first whether the relay holds it when lookups are not available, and before a
        retry); retried on network errors and passing answers. A failure stops the batch: the files after
        it do not start. `data`: the file's bytes as hashed (else it is read again)."""
        try:
            return self._upload(http, item, data)
        except BaseException:
            self.stop.set()
            raise

    def _upload(self, http: httpx.Client, item: LocalInput, data: bytes | None) -> UploadedInput:
        reason = ""
        retry_after: float | None = None
        for attempt in range(self.attempts):
            if attempt and self.stop.wait(self.backoff.delay(attempt - 1, retry_after=retry_after)):
                raise _Stopped()
            sent = [0]
            try:
                answer = self._try(http, item, data, sent, look=attempt > 0 or not self.lookups)
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

    def _try(
        self, http: httpx.Client, item: LocalInput, data: bytes | None, sent: list[int], *, look: bool
    ) -> UploadedInput | httpx.Response:
        """One try: the file's upload (`look`: unless the relay turns out to hold it), or an answer worth
        retrying; raises for a refusal."""
        if self.stop.is_set():
            raise _Stopped()
        if look:
            found = http.get(f"{self.base}/v1/inputs/{item.sha256}", headers=self._auth)
            if found.status_code == 200:
                self.tally.report(done=1, skipped=item)
                return _described(_json(found), item, skipped=True)
            if found.status_code != 404:
                if _retryable(found.status_code):
                    return found
                raise self._refusal(found, item)
            if self.stop.is_set():
                raise _Stopped()
        headers = {
            **self._auth,
            "X-Podstream-Sha256": item.sha256,
            "Content-Type": item.mime,
            "Content-Length": str(item.bytes),
        }
        body: bytes | Iterator[bytes]
        if data is not None and len(data) <= CHUNK_BYTES:  # one piece: sent as it is
            sent[0] += len(data)
            self.tally.report(sent=len(data))
            body = data
        else:
            body = self._chunks(item, sent) if data is None else self._pieces(data, sent)
        response = http.put(f"{self.base}/v1/inputs", content=body, headers=headers)
        if response.status_code in (200, 201):
            self.tally.report(done=1)
            return _described(_json(response), item, skipped=False)
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

    def _pieces(self, data: bytes, sent: list[int]) -> Iterator[bytes]:
        """The bytes as hashed as the PUT body, in chunks, counted as they go."""
        for start in range(0, len(data), CHUNK_BYTES):
            if self.stop.is_set():
                raise _Stopped()
            chunk = data[start : start + CHUNK_BYTES]
            sent[0] += len(chunk)
            self.tally.report(sent=len(chunk))
            yield chunk

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


def _json(response: httpx.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return response.text


def _described(answer: object, item: LocalInput, *, skipped: bool) -> UploadedInput:
    """The relay's description of `item` (a PUT's, GET's or lookup's answer), checked against the file."""
    if not isinstance(answer, dict) or answer.get("sha256") != item.sha256:
        raise TransferError(f"uploading {item.path}: unexpected answer from the relay: {str(answer)[:200]}")
    url = answer.get("url") if isinstance(answer.get("url"), str) else None
    expires = answer.get("expires_at")
    expires_at = float(expires) if isinstance(expires, (int, float)) else None
    return UploadedInput(item.path, item.ref, item.sha256, item.bytes, skipped, url, expires_at)
