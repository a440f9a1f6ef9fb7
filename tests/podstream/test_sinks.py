"""podstream.sinks: items land on disk verified and complete, under names never taken raw from input."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from podstream.sinks import FileSink, extension, kept_file, media_name


@pytest.mark.parametrize(
    ("item", "id", "mime", "name"),
    [
        (0, "cat", "video/mp4", "00000-cat.mp4"),
        (7, "", "image/png", "00007.png"),
        (3, "../../etc/passwd", "image/jpeg", "00003-etc_passwd.jpg"),
        (3, "/abs/path", "image/webp", "00003-abs_path.webp"),
        (4, "%2e%2e/x\x00y", "video/webm", "00004-2e_2e_x_y.webm"),
        (5, "..", "application/x-unknown", "00005.bin"),
    ],
)
def test_media_names_are_derived_and_safe(item: int, id: str, mime: str, name: str) -> None:
    assert media_name(item, id, mime) == name
    assert "/" not in name and "\x00" not in name


def test_long_ids_are_cut() -> None:
    assert len(media_name(1, "x" * 500, "image/png")) < 80
    assert extension("video/mp4") == "mp4"


def test_out_of_order_parts_are_verified_and_renamed(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    sink = FileSink(tmp_path, 2, "clip", "video/mp4", len(data))
    for offset in (6000, 0, 3000, 9000):
        sink.write(offset, data[offset : offset + 3000])
    assert not (tmp_path / "00002-clip.mp4").exists()  # nothing under the final name before verification
    ok, path = sink.finish(hashlib.sha256(data).hexdigest())
    assert ok and path == tmp_path / "00002-clip.mp4"
    assert path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00002-clip.mp4"]


def test_checksum_mismatch_leaves_nothing(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, 0, "a", "image/png", 3, fsync=False)
    sink.write(0, b"abc")
    ok, result = sink.finish("0" * 64)
    assert not ok and result is None
    assert list(tmp_path.iterdir()) == []


def test_abort_removes_the_temp_file(tmp_path: Path) -> None:
    sink = FileSink(tmp_path, 0, "a", "image/png", 3)
    sink.write(0, b"a")
    sink.abort()
    sink.abort()  # idempotent
    assert list(tmp_path.iterdir()) == []


def test_a_complete_part_left_by_a_stopped_transfer_is_verified_and_put_in_place(tmp_path: Path) -> None:
    data = os.urandom(5000)
    sha = hashlib.sha256(data).hexdigest()
    sink = FileSink(tmp_path, 1, "clip", "video/mp4", len(data))
    sink.write(0, data)
    sink.close()  # stopped while finishing: the `.part` stays
    assert kept_file(tmp_path, 1, "clip", "video/mp4", len(data), "0" * 64) is None  # another file's sha256
    assert (tmp_path / ".00001-clip.mp4.part").exists()
    path = kept_file(tmp_path, 1, "clip", "video/mp4", len(data), sha)
    assert path == tmp_path / "00001-clip.mp4" and path.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00001-clip.mp4"]
    # a file already under its final name is verified and kept as it is
    assert kept_file(tmp_path, 1, "clip", "video/mp4", len(data), sha, fsync=False) == path


def test_a_partial_or_wrong_file_is_not_kept(tmp_path: Path) -> None:
    data = b"abcdef"
    sha = hashlib.sha256(data).hexdigest()
    assert kept_file(tmp_path, 0, "a", "image/png", len(data), sha) is None  # nothing there
    (tmp_path / ".00000-a.png.part").write_bytes(data[:3])  # a transfer stopped mid-bytes
    (tmp_path / "00000-a.png").write_bytes(b"abcdeX")  # same size, other bytes
    assert kept_file(tmp_path, 0, "a", "image/png", len(data), sha) is None
    (tmp_path / "00001-b.png").mkdir()
    assert kept_file(tmp_path, 1, "b", "image/png", 0, hashlib.sha256(b"").hexdigest()) is None
    # the next download replaces the `.part` from its start
    sink = FileSink(tmp_path, 0, "a", "image/png", len(data), fsync=False)
    sink.write(0, data)
    ok, path = sink.finish(sha)
    assert ok and path.read_bytes() == data
