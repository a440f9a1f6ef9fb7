"""`GET /v1/jobs/{id}/media/{item}` in cluster mode, where the item is an object in the bucket.

With `--media-redirect` the answer is `302` to a presigned URL of the object (valid `media_url_ttl_s`):
browsers and `podstream watch` download straight from the bucket or its CDN, and the relays carry no media
bytes. The request was authorized (key, token or signed URL) before; the presigned URL is the grant.

Without it the relay streams the object itself, read by range from the bucket in 1 MiB pieces, with one
`Range: bytes=a-b` / `bytes=a-` / `bytes=-n` range (206) as `FileResponse` serves a local file; anything
else in Range is answered whole (200), which RFC 9110 allows.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Final, Protocol

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from relay.storage.local.store import JobStore

if TYPE_CHECKING:
    from relay.service import Relay

PIECE: Final = 1 << 20
_RANGE: Final = re.compile(r"^bytes=(\d*)-(\d*)$")


class Source(Protocol):
    """What `ClusterJobStore.check_media` answers (`relay.storage.cluster.job_store.BucketObject`)."""

    key: str
    size: int

    @property
    def media(self) -> Any: ...

    def read(self, offset: int, length: int) -> bytes: ...


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a single satisfiable range, else None (then the whole object is sent)."""
    if not header or size == 0:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last n bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n > 0 else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    return (start, end) if start <= end < size else None


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
        url = source.media.presign(source.key, relay.settings.media_url_ttl_s)
        return RedirectResponse(url, status_code=302, headers={"cache-control": "private, no-store"})
    size = int(source.size)
    mime = record.get("mime") or "application/octet-stream"
    out = {**headers, "accept-ranges": "bytes", "content-type": mime}
    wanted = byte_range(request.headers.get("range"), size)
    status, first, last = (206, *wanted) if wanted is not None else (200, 0, size - 1)
    if wanted is not None:
        out["content-range"] = f"bytes {first}-{last}/{size}"
    out["content-length"] = str(max(0, last - first + 1))
    if request.method == "HEAD":
        return Response(status_code=status, headers=out)
    return StreamingResponse(_pieces(relay, store, source, first, last), status_code=status, headers=out)


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
