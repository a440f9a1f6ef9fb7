from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from tests.worker.support import decode_video
from worker import encode
from worker.encode import EncodeError, ImageSettings, VideoSettings


def frames(count: int = 8, height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, height, width, 3), dtype=np.float32)


def decoded_arrays(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data), mode="r") as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_mp4_is_h264_yuv420p_with_moov_before_mdat() -> None:
    data = encode.encode_video(frames(), VideoSettings(fps=8))
    boxes = encode.top_level_boxes(data)
    assert boxes.index(b"moov") < boxes.index(b"mdat")
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.codec_context.profile == "High"
        assert float(stream.average_rate or 0) == pytest.approx(8)
    assert decode_video(data) == (8, 64, 64, "h264")


def test_crf_0_is_lossless_in_the_high_444_profile() -> None:
    """docs/worker.md allows crf 0..51: libx264 refuses lossless in the High profile, so crf 0 is High 4:4:4
    Predictive, still yuv420p, and decodes to exactly the frames given (after their conversion to yuv420p)."""
    given = (frames(6, 48, 64) * 255).astype(np.uint8)
    data = encode.encode_video(given, VideoSettings(fps=8, crf=0))
    with av.open(io.BytesIO(data), mode="r") as container:
        context = container.streams.video[0].codec_context
        assert (context.profile, context.pix_fmt) == ("High 4:4:4 Predictive", "yuv420p")
        got = [f.to_ndarray(format="yuv420p") for f in container.decode(video=0)]
    want = [
        av.VideoFrame.from_ndarray(a, format="rgb24").reformat(format="yuv420p").to_ndarray() for a in given
    ]
    assert len(got) == 6 and all(np.array_equal(g, w) for g, w in zip(got, want, strict=True))
    for crf in (1, 23, 51):  # every other crf keeps the High profile, which every H.264 decoder plays
        lossy = encode.encode_video(given, VideoSettings(fps=8, crf=crf))
        with av.open(io.BytesIO(lossy), mode="r") as container:
            assert container.streams.video[0].codec_context.profile == "High"


def test_faststart_keeps_every_frame_byte_identical() -> None:
    # Encode without moving moov, move it by hand, and compare what decodes: the chunk offsets were shifted right.
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for array in frames(6, 48, 64):
            frame = av.VideoFrame.from_ndarray((array * 255).astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    raw = buffer.getvalue()
    boxes = encode.top_level_boxes(raw)
    assert boxes.index(b"moov") > boxes.index(b"mdat")  # what FFmpeg writes into a BytesIO
    moved = encode.faststart(raw)
    assert len(moved) == len(raw)
    assert encode.top_level_boxes(moved).index(b"moov") < encode.top_level_boxes(moved).index(b"mdat")
    before, after = decoded_arrays(raw), decoded_arrays(moved)
    assert len(after) == 6
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert encode.faststart(moved) == moved  # already first: unchanged


def test_faststart_rejects_a_corrupt_box() -> None:
    bad = struct.pack(">I4s", 4, b"mdat") + struct.pack(">I4s", 8, b"moov")
    with pytest.raises(EncodeError, match="corrupt MP4"):
        encode.faststart(bad)


def test_fragmented_mp4_starts_with_moov_and_decodes() -> None:
    data = encode.encode_video(frames(), VideoSettings(fps=8, fragmented=True))
    assert encode.top_level_boxes(data)[:3] == [b"ftyp", b"moov", b"moof"]
    assert decode_video(data) == (8, 64, 64, "h264")


def test_odd_sizes_are_padded_to_even_not_cropped() -> None:
    data = encode.encode_video(frames(3, 33, 47), VideoSettings())
    assert decode_video(data) == (3, 48, 34, "h264")


def test_webm_is_vp9() -> None:
    pictures = [Image.fromarray((f * 255).astype(np.uint8)) for f in frames(5)]
    data = encode.encode_video(pictures, VideoSettings("webm", fps=10, crf=40))
    assert data[:4] == b"\x1a\x45\xdf\xa3"  # EBML
    assert decode_video(data) == (5, 64, 64, "vp9")


def test_frame_kinds_uint8_gray_rgba() -> None:
    uint8 = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    gray = [np.full((16, 16), 200, dtype=np.uint8)] * 2
    rgba = [np.zeros((16, 16, 4), dtype=np.uint8)] * 2
    for video in (uint8, gray, rgba):
        assert decode_video(encode.encode_video(video))[:3] == (2, 16, 16)


@pytest.mark.parametrize(
    ("video", "settings", "message"),
    [
        ([], VideoSettings(), "at least one frame"),
        (frames(2), VideoSettings("avi"), "unknown video format"),
        (frames(2), VideoSettings(fps=0), "fps"),
        (frames(2), VideoSettings(crf=60), "0..51"),
        ([np.zeros((16, 16, 3)), np.zeros((8, 8, 3))], VideoSettings(), "frame 1 is 8x8"),
        ([np.zeros((4, 16, 16, 3))], VideoSettings(), "shape"),
    ],
)
def test_video_errors_are_clear(video: object, settings: VideoSettings, message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        encode.encode_video(video, settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fmt", "magic"), [("png", b"\x89PNG"), ("jpeg", b"\xff\xd8\xff"), ("webp", b"RIFF")]
)
def test_images(fmt: str, magic: bytes) -> None:
    data = encode.encode_image(frames(1, 30, 50)[0], ImageSettings(fmt, quality=80))
    assert data.startswith(magic)
    with Image.open(io.BytesIO(data)) as picture:
        assert picture.size == (50, 30)
        assert picture.format == {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}[fmt]


def test_png_is_lossless() -> None:
    array = (frames(1, 20, 20)[0] * 255).astype(np.uint8)
    data = encode.encode_image(Image.fromarray(array), ImageSettings("png"))
    with Image.open(io.BytesIO(data)) as picture:
        assert np.array_equal(np.asarray(picture.convert("RGB")), array)


def test_image_errors() -> None:
    with pytest.raises(EncodeError, match="unknown image format"):
        encode.encode_image(np.zeros((4, 4, 3)), ImageSettings("gif"))
    with pytest.raises(EncodeError, match="quality"):
        encode.encode_image(np.zeros((4, 4, 3)), ImageSettings("jpeg", quality=0))


PLAYER = """<html><body><div id="r">pending</div><video id="v" muted src="{name}"></video><script>
const v = document.getElementById("v"), r = document.getElementById("r");
v.addEventListener("loadeddata", () => {{ r.textContent = "loaded " + v.videoWidth + "x" + v.videoHeight; }});
v.addEventListener("error", () => {{ r.textContent = "error " + (v.error && v.error.code); }});
</script></body></html>"""


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian chromium (installed in CI)")
@pytest.mark.parametrize(
    ("name", "settings"),
    [
        ("a.mp4", VideoSettings(fps=8)),
        ("b.mp4", VideoSettings(fps=8, fragmented=True)),
        ("lossless.mp4", VideoSettings(fps=8, crf=0)),
        ("c.webm", VideoSettings("webm")),
    ],
)
def test_chromium_plays_it(tmp_path: Path, name: str, settings: VideoSettings) -> None:
    (tmp_path / name).write_bytes(encode.encode_video(frames(8, 64, 96), settings))
    page = tmp_path / f"{name}.html"
    page.write_text(PLAYER.format(name=name))
    done = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    assert '<div id="r">loaded 96x64</div>' in done.stdout, done.stdout[-500:] + done.stderr[-1500:]
