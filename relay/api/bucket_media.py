"""`GET /v1/jobs/{id}/media/{item}` in cluster mode, where the item is an object in the bucket.

With `--media-redirect` the answer is `302` to a presigned URL of the object (valid `media_url_ttl_s`):
browsers and `podstream watch` download straight from the bucket or its CDN, and the relays carry no media
bytes. The request was authorized (key, token or signed URL) before; the presigned URL is the grant. Only
an `If-None-Match` naming the item's ETag (the sha256) is still answered here (304, by the route); Range,
HEAD and the bucket's own ETag (its MD5) are the bucket's business after the redirect (docs/protocol.md).

Without it the relay streams the object itself, read by range from the bucket in 1 MiB pieces, with one
`Range: bytes=a-b` / `bytes=a-` / `bytes=-n` range (206) as `FileResponse` serves a local file. Several
ranges are answered whole (200), which RFC 9110 allows; a Range that cannot be parsed, or names another unit,
is ignored (200, as RFC 9110 asks); one whose every range starts past the end is `416` with
`Content-Range: bytes */size` (`ranges`, which the local-disk route uses too).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final, Protocol

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from relay.storage.job import JobStore

if TYPE_CHECKING:
    from relay.service import Relay

PIECE: Final = 1 << 20
#: ASCII digits only (`\d` takes other scripts' digits, which `int` reads), and few enough that `int` is cheap:
#: a longer number is not a range this relay reads (the header is ignored).
_RANGE: Final = re.compile(r"^bytes=([0-9]{0,19})-([0-9]{0,19})$")


class Source(Protocol):
    """What `ClusterJobStore.check_media` answers (`relay.storage.cluster.job_store.BucketObject`)."""

    key: str
    size: int

    @property
    def media(self) -> Any: ...

    def read(self, offset: int, length: int) -> bytes: ...


class Unsatisfiable(Exception):
    """No range of the request's Range lies within the file: answered `416` with `Content-Range: bytes */size`."""

    def __init__(self, size: int) -> None:
        super().__init__(f"no byte of this range exists: the file is {size} bytes")
        self.size = size


def ranges(header: str | None, size: int) -> list[tuple[int, int]] | None:
    """The satisfiable ranges of a `Range` header, (first, last) each, clamped to the file; None when the
    header is absent or is to be ignored (another unit, a malformed range set: the whole file, 200).
    Raises `Unsatisfiable` when the set is valid but none of its ranges lies within the file (RFC 9110,
    14.1.2: a range starting at or past the end, a suffix of 0 bytes; every int-range of an empty file)."""
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        return None
    wanted: list[tuple[int, int]] = []
    empty_suffix = False  # a suffix of an empty file: satisfiable (RFC 9110), but has no byte to send
    for part in spec.split(","):
        match = _RANGE.match("bytes=" + part.strip())
        if match is None or match.groups() == ("", ""):
            return None
        first, last = match.groups()
        if not first:  # the last n bytes
            if int(last) > 0 and size > 0:
                wanted.append((max(0, size - int(last)), size - 1))
            empty_suffix = empty_suffix or (int(last) > 0 and size == 0)
        elif last and int(last) < int(first):
            return None  # an invalid range makes the whole set invalid: ignored
        elif int(first) < size:
            wanted.append((int(first), min(int(last), size - 1) if last else size - 1))
    if not wanted and not empty_suffix:
        raise Unsatisfiable(size)
    return wanted or None


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a single satisfiable range, else None (then the whole object is sent; `ranges`
    tells an unsatisfiable Range, 416, from one to ignore)."""
    try:
        return _single(ranges(header, size))
    except Unsatisfiable:
        return None


def _single(wanted: list[tuple[int, int]] | None) -> tuple[int, int] | None:
    return wanted[0] if wanted is not None and len(wanted) == 1 else None


def response(
    request: Request,
    relay: Relay,
    store: JobStore,
    record: dict[str, Any],
    source: Any,
    headers: dict[str, str],
) -> Response:
    if source is None:
        raise LookupError("no object for this record")
    if relay.settings.media_redirect:
        # A HEAD is sent to a URL presigned for HEAD: the client repeats its method at the Location.
        url = source.media.presign(source.key, relay.settings.media_url_ttl_s, method=request.method)
        return RedirectResponse(url, status_code=302, headers={"cache-control": "private, no-store"})
    size = int(source.size)
    mime = record.get("mime") or "application/octet-stream"
    out = {**headers, "accept-ranges": "bytes", "content-type": mime}
    wanted = _single(ranges(range_header(request, headers["etag"]), size))  # Unsatisfiable: 416
    status, first, last = (206, *wanted) if wanted is not None else (200, 0, size - 1)
    if wanted is not None:
        out["content-range"] = f"bytes {first}-{last}/{size}"
    out["content-length"] = str(max(0, last - first + 1))
    if request.method == "HEAD":
        return Response(status_code=status, headers=out)
    return StreamingResponse(_pieces(relay, store, source, first, last), status_code=status, headers=out)


def range_header(request: Request, etag: str) -> str | None:
    """The request's Range, unless an `If-Range` names another version of the file (then the whole file)."""
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        return None
    return request.headers.get("range")


async def _pieces(
    relay: Relay, store: JobStore, source: Source, first: int, last: int
) -> AsyncIterator[bytes]:
    sent = 0
    with store.reading():
        try:
            offset = first
            while offset <= last:
                length = min(PIECE, last - offset + 1)
                data = await asyncio.to_thread(source.read, offset, length)
                yield data
                sent += len(data)
                offset += length
        finally:
            relay.metrics.bytes_out.labels("http").inc(sent)
