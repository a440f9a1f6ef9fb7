"""What kind of image a byte string is, from its first bytes (magic numbers), without decoding it.

Shared by everything that takes job inputs: the relay refuses an upload that is not an image (415) before
storing it, and the CLI names a file that is not one before sending it. Decoding (and its pixel limits)
stays the worker's job.
"""

from __future__ import annotations

from typing import Final

#: Bytes `sniff` needs to tell every supported kind apart.
HEAD_BYTES: Final = 12
#: The image types podstream takes as job inputs, as `sniff` names them.
IMAGE_TYPES: Final = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp"})
_SIGNATURES: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


def sniff(head: bytes) -> str | None:
    """The MIME type of the image whose file starts with `head` (at least `HEAD_BYTES` of it), or None."""
    for magic, mime in _SIGNATURES:
        if head.startswith(magic):
            return mime
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return None
