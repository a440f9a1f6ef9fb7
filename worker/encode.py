"""Frames and images to file bytes, entirely in memory: MP4 (H.264) and WebM (VP9) with PyAV, images with Pillow.

MP4 is H.264 High profile, yuv420p, `moov` box first, so a browser (Chromium included) starts playing before
the last byte arrives. `crf` 0 is lossless, which libx264 refuses in the High profile: it gets High 4:4:4
Predictive (still yuv420p; Chromium plays it, some hardware decoders do not). FFmpeg's own `+faststart` needs a seekable file it can reopen, which a BytesIO is not,
so `faststart` moves the box itself and shifts the chunk offsets inside it. `fragmented=True` writes a
fragmented MP4 instead (`moov` first by construction, playable while it streams). libx264 and yuv420p need
even dimensions: odd frames are padded by repeating their last row/column, never cropped.

Frames may be PIL images, or numpy arrays of shape (H, W, 3) / (H, W, 4) / (H, W) in uint8, or floats in
[0, 1] (what diffusers returns with `output_type="np"`). A video may also be one array (T, H, W, C).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import numpy as np

VIDEO_FORMATS: Final = frozenset({"mp4", "webm"})
IMAGE_FORMATS: Final = frozenset({"png", "webp", "jpeg"})
MIME: Final = {
    "mp4": "video/mp4",
    "webm": "video/webm",
    "png": "image/png",
    "webp": "image/webp",
    "jpeg": "image/jpeg",
}


class EncodeError(ValueError):
    """The frames or image cannot be encoded as asked (no frames, wrong shape, unknown format)."""


@dataclass(frozen=True)
class VideoSettings:
    format: str = "mp4"  # "mp4" | "webm"
    fps: float = 7.0
    crf: int = 23  # H.264: 0..51, VP9: 0..63; lower is better quality and larger
    preset: str = "veryfast"  # libx264 speed/size trade-off
    fragmented: bool = False  # mp4 only


@dataclass(frozen=True)
class ImageSettings:
    format: str = "png"  # "png" | "webp" | "jpeg"
    quality: int = 90  # webp/jpeg: 1..100; ignored by png (lossless)


def to_rgb_array(frame: Any) -> np.ndarray:
    """One frame as a contiguous uint8 (H, W, 3) array."""
    import numpy as np
    from PIL import Image

    if isinstance(frame, Image.Image):
        frame = np.asarray(frame.convert("RGB"))
    array = np.asarray(frame)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise EncodeError(f"a frame must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif array.shape[-1] == 4:
        array = array[..., :3]
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            array = (np.clip(np.nan_to_num(array), 0.0, 1.0) * 255.0).round()
        array = np.clip(array, 0, 255).astype(np.uint8)
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise EncodeError(f"a frame must not be empty, got shape {array.shape}")
    return np.ascontiguousarray(array)


def _even(array: np.ndarray) -> np.ndarray:
    import numpy as np

    h, w = array.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return array
    return np.pad(array, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _frames(frames: Iterable[Any] | np.ndarray) -> Iterator[np.ndarray]:
    for frame in frames:
        yield _even(to_rgb_array(frame))


def encode_video(frames: Iterable[Any] | np.ndarray, settings: VideoSettings = VideoSettings()) -> bytes:
    """Encode frames to an MP4 or WebM file in memory. All frames must have the same size."""
    import av

    if settings.format not in VIDEO_FORMATS:
        raise EncodeError(f"unknown video format {settings.format!r}; use one of {sorted(VIDEO_FORMATS)}")
    if not 0 < settings.fps <= 240:
        raise EncodeError(f"fps must be in (0, 240], got {settings.fps}")
    buffer = io.BytesIO()
    options: dict[str, str] = {}
    if settings.format == "mp4" and settings.fragmented:
        options["movflags"] = "frag_keyframe+empty_moov+default_base_moof"
    count = 0
    with av.open(buffer, mode="w", format=settings.format, options=options) as container:
        stream: Any = None
        size: tuple[int, int] | None = None
        for array in _frames(frames):
            if stream is None:
                stream = _add_stream(container, settings, array.shape[1], array.shape[0])
                size = (array.shape[1], array.shape[0])
            elif (array.shape[1], array.shape[0]) != size:
                first = f"{size[0]}x{size[1]}" if size else "?"
                raise EncodeError(
                    f"frame {count} is {array.shape[1]}x{array.shape[0]}, the first was {first}"
                )
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
            count += 1
        if stream is None:
            raise EncodeError("a video needs at least one frame")
        for packet in stream.encode(None):
            container.mux(packet)
    data = buffer.getvalue()
    if settings.format == "mp4" and not settings.fragmented:
        data = faststart(data)
    return data


def _add_stream(container: Any, settings: VideoSettings, width: int, height: int) -> Any:
    from fractions import Fraction

    rate = Fraction(settings.fps).limit_denominator(1001)
    if settings.format == "mp4":
        if not 0 <= settings.crf <= 51:
            raise EncodeError(f"crf for H.264 must be in 0..51, got {settings.crf}")
        stream = container.add_stream("libx264", rate=rate)
        # libx264's High profile has no lossless mode ("high profile doesn't support lossless"): crf 0 needs
        # High 4:4:4 Predictive, the only H.264 profile that has one.
        profile = "high444" if settings.crf == 0 else "high"
        stream.options = {"crf": str(settings.crf), "preset": settings.preset, "profile": profile}
    else:
        if not 0 <= settings.crf <= 63:
            raise EncodeError(f"crf for VP9 must be in 0..63, got {settings.crf}")
        stream = container.add_stream("libvpx-vp9", rate=rate)
        # Constant quality (b:v 0 + crf), realtime speed: this is a preview format, not an archive one.
        stream.options = {
            "crf": str(settings.crf),
            "b": "0",
            "deadline": "realtime",
            "cpu-used": "8",
            "row-mt": "1",
        }
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    return stream


def encode_image(image: Any, settings: ImageSettings = ImageSettings()) -> bytes:
    """Encode one image (PIL image or array, see `to_rgb_array`) as PNG, WebP or JPEG."""
    from PIL import Image

    if settings.format not in IMAGE_FORMATS:
        raise EncodeError(f"unknown image format {settings.format!r}; use one of {sorted(IMAGE_FORMATS)}")
    if not 1 <= settings.quality <= 100:
        raise EncodeError(f"quality must be in 1..100, got {settings.quality}")
    if isinstance(image, Image.Image) and image.mode in ("RGB", "RGBA", "L") and settings.format != "jpeg":
        picture = image
    else:
        picture = Image.fromarray(to_rgb_array(image))
    buffer = io.BytesIO()
    if settings.format == "png":
        picture.save(buffer, format="PNG", compress_level=6)
    elif settings.format == "webp":
        picture.save(buffer, format="WEBP", quality=settings.quality, method=4)
    else:
        picture.save(buffer, format="JPEG", quality=settings.quality, optimize=True)
    return buffer.getvalue()


# ---- MP4 boxes: move `moov` in front of `mdat`


def _boxes(
    data: bytes | bytearray | memoryview, start: int, end: int
) -> Iterator[tuple[bytes, int, int, int]]:
    """(type, offset, header length, total size) of each box in data[start:end]."""
    offset = start
    while offset + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1:
            (size,) = struct.unpack_from(">Q", data, offset + 8)
            header = 16
        elif size == 0:
            size = end - offset
        if size < header or offset + size > end:
            raise EncodeError(f"corrupt MP4: box {kind!r} at {offset} has size {size}")
        yield kind, offset, header, size
        offset += size


_CONTAINERS: Final = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"udta", b"mvex"})


def _shift_chunk_offsets(moov: bytearray, delta: int) -> None:
    """Add `delta` to every stco/co64 entry inside a `moov` box (in place)."""
    stack: list[tuple[int, int]] = [(0, len(moov))]
    while stack:
        start, end = stack.pop()
        for kind, offset, header, size in _boxes(moov, start, end):
            if kind in _CONTAINERS:
                stack.append((offset + header, offset + size))
            elif kind in (b"stco", b"co64"):
                body = offset + header + 4  # version and flags
                (count,) = struct.unpack_from(">I", moov, body)
                wide = kind == b"co64"
                fmt, width = (">Q", 8) if wide else (">I", 4)
                for i in range(count):
                    at = body + 4 + i * width
                    (value,) = struct.unpack_from(fmt, moov, at)
                    value += delta
                    if not wide and value > 0xFFFFFFFF:
                        raise EncodeError("MP4 over 4 GiB with 32-bit chunk offsets")
                    struct.pack_into(fmt, moov, at, value)


def faststart(data: bytes) -> bytes:
    """The same MP4 with its `moov` box moved in front of `mdat` (a no-op when it already is)."""
    boxes = list(_boxes(data, 0, len(data)))
    kinds = [b[0] for b in boxes]
    if b"moov" not in kinds or b"mdat" not in kinds or kinds.index(b"moov") < kinds.index(b"mdat"):
        return data
    _, moov_at, _, moov_size = boxes[kinds.index(b"moov")]
    moov = bytearray(data[moov_at : moov_at + moov_size])
    _shift_chunk_offsets(moov, moov_size)
    out = bytearray()
    for kind, offset, _, size in boxes:
        if kind == b"moov":
            continue
        if kind == b"mdat":
            out += moov
        out += data[offset : offset + size]
    return bytes(out)


def top_level_boxes(data: bytes) -> Sequence[bytes]:
    """The types of an MP4's top-level boxes, in order (for checks and tests)."""
    return [kind for kind, *_ in _boxes(data, 0, len(data))]
