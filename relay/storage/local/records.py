"""`RecordLog`: an append-only file of msgpack maps that survives damage.

Frame: `MAGIC (4 bytes) | length (4, big endian) | crc32 of the body (4) | msgpack map`. The magic marker
is what makes damage survivable: when a frame does not check out (a flipped byte, a bad length field), the
reader searches forward for the next marker whose frame does (length within bounds, crc, a msgpack map)
and goes on from there. So:

- damage *inside* the file costs only the records it touched: `scan` skips the damaged span, copies the file
  as it was into the quarantine directory (for an operator, or a later post-mortem), rewrites the file
  without the span, and lists the span in `damage`;
- a torn *tail* (no valid frame after the last good one: a crash in the middle of a write, garbage
  appended) is truncated, as before, and counted in `truncated`.

Files written before the marker existed (frames `length | crc | body`, "legacy") are recognised by their
first bytes (a legacy length can never look like the marker: it is above `MAX_RECORD_BYTES`), read with
the old rules (the first bad frame ends the log) and converted to the current framing in place, so a relay
upgrade keeps every job.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgpack

from relay.storage.job import MAX_RECORD_BYTES

#: Starts every frame. Its first byte is above any legacy length's first byte (see the module docstring).
MAGIC: Final = b"\xf5PSR"
_HEADER: Final = struct.Struct(">4sII")
_LEGACY_HEADER: Final = struct.Struct(">II")
#: No single record is larger than this (a manifest page is under 1 MB); a longer frame means corruption.
HEADER_BYTES: Final = _HEADER.size


def pack(record: dict[str, Any]) -> bytes:
    body: bytes = msgpack.packb(record, use_bin_type=True)
    return _HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body


def _unpack(body: bytes | memoryview) -> dict[str, Any] | None:
    try:
        record = msgpack.unpackb(body, raw=False)
    except (ValueError, msgpack.UnpackException):
        return None
    return record if isinstance(record, dict) else None


def _frame_at(data: mmap.mmap, offset: int, size: int) -> tuple[dict[str, Any], int] | None:
    """The record of a whole, valid frame at `offset` and where the frame ends, else None."""
    if offset + _HEADER.size > size:
        return None
    magic, length, crc = _HEADER.unpack_from(data, offset)
    end = offset + _HEADER.size + length
    if magic != MAGIC or length > MAX_RECORD_BYTES or end > size:
        return None
    body = data[offset + _HEADER.size : end]
    if zlib.crc32(body) != crc:
        return None
    record = _unpack(body)
    return None if record is None else (record, end)


def _legacy_frame_at(data: mmap.mmap, offset: int, size: int) -> tuple[dict[str, Any], int] | None:
    if offset + _LEGACY_HEADER.size > size:
        return None
    length, crc = _LEGACY_HEADER.unpack_from(data, offset)
    end = offset + _LEGACY_HEADER.size + length
    if length > MAX_RECORD_BYTES or end > size:
        return None
    body = data[offset + _LEGACY_HEADER.size : end]
    record = _unpack(body) if zlib.crc32(body) == crc else None
    return None if record is None else (record, end)


class RecordLog:
    """An append-only file of msgpack maps. One writer; `scan` and `read_at` may run beside it."""

    def __init__(self, path: Path, *, fsync: bool = True, quarantine: Path | None = None) -> None:
        self.path = path
        self.fsync = fsync
        #: Where a damaged file is copied before it is repaired (default: `quarantine/` beside it).
        self.quarantine = quarantine or path.parent / "quarantine"
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = 0
        self.truncated = 0  # bytes of torn tail dropped by `scan`
        #: (offset, length) of each damaged span `scan` skipped, in the file as it was.
        self.damage: list[tuple[int, int]] = []
        #: The copy of the damaged file kept by `scan`, if it found damage.
        self.quarantined: Path | None = None
        self.legacy = False  # the file was in the legacy framing (converted by `scan`)
        self._dirty = False  # written to since the last `sync`
        #: Frames appended and not yet written: `sync` writes them in one `write`, then fsyncs (group commit).
        self._buffer: list[bytes] = []
        self._written = 0  # the file's size on disk: `size` less the buffered frames

    @property
    def fd(self) -> int:
        return self._fd

    def scan(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """Every valid record with its offset (in the file as `scan` leaves it). Skips damaged spans,
        truncates a torn tail, converts a legacy file. Call once, first, before any `append`."""
        self.damage = []
        self.truncated = 0
        end = os.fstat(self._fd).st_size
        if end == 0:
            self.size = 0
            return
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[: len(MAGIC)] != MAGIC and _legacy_frame_at(data, 0, end) is not None:
                yield from self._convert_legacy(data, end)
                return
            spans: list[tuple[int, int]] = []  # the good byte ranges, in order
            offset = good_end = 0
            skipped = 0
            while offset < end:
                found = _frame_at(data, offset, end)
                if found is not None:
                    record, frame_end = found
                    yield offset - skipped, record
                    if spans and spans[-1][1] == offset:
                        spans[-1] = (spans[-1][0], frame_end)
                    else:
                        spans.append((offset, frame_end))
                    offset = good_end = frame_end
                    continue
                resume = self._resync(data, offset + 1, end)
                if resume is None:
                    break  # nothing valid after this: a torn tail
                self.damage.append((offset, resume - offset))
                skipped += resume - offset
                offset = resume
            self.truncated = end - good_end
            if self.damage:
                self.quarantine_copy()
                self._rewrite(b"".join(data[a:b] for a, b in spans))
        if not self.damage and self.truncated:
            os.ftruncate(self._fd, good_end)
            self._dirty = True
            self.sync()
        self.size = self._written = good_end - skipped

    @staticmethod
    def _resync(data: mmap.mmap, start: int, end: int) -> int | None:
        """The offset of the next valid frame at or after `start`, else None."""
        at = data.find(MAGIC, start, end)
        while at >= 0:
            if _frame_at(data, at, end) is not None:
                return at
            at = data.find(MAGIC, at + 1, end)
        return None

    def _convert_legacy(self, data: mmap.mmap, end: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """Read a legacy file (its first bad frame ends it) and rewrite it in the current framing."""
        self.legacy = True
        records: list[dict[str, Any]] = []
        offset = 0
        while (found := _legacy_frame_at(data, offset, end)) is not None:
            record, offset = found
            records.append(record)
        self.truncated = end - offset
        frames = [pack(r) for r in records]
        self._rewrite(b"".join(frames))
        position = 0
        for frame, record in zip(frames, records, strict=True):
            yield position, record
            position += len(frame)
        self.size = self._written = position

    def quarantine_copy(self) -> None:
        self.quarantine.mkdir(parents=True, exist_ok=True)
        target = self.quarantine / f"{self.path.name}.{time.time_ns()}"
        with open(self.path, "rb") as source, open(target, "wb") as copy:
            while chunk := source.read(1 << 20):
                copy.write(chunk)
            if self.fsync:
                copy.flush()
                os.fsync(copy.fileno())
        self.quarantined = target

    def _rewrite(self, content: bytes) -> None:
        """Replace the file's content atomically (temp file, fsync, rename) and reopen it."""
        temp = self.path.with_name(f".{self.path.name}.rewrite")
        with open(temp, "wb") as f:
            f.write(content)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(temp, self.path)
        self.close()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)

    def append(self, records: list[dict[str, Any]]) -> list[int]:
        """Add the records; returns their offsets. Nothing reaches the file before `sync` (or `flush`):
        whatever the records name is made durable first, and the records of several appends go to the
        file in one `write` and one fsync (group commit)."""
        offsets: list[int] = []
        position = self.size
        for record in records:
            frame = pack(record)
            offsets.append(position)
            position += len(frame)
            self._buffer.append(frame)
        self.size = position
        return offsets

    def flush(self) -> None:
        """Write the buffered frames in one `write` (not fsynced). A write that fails part way (ENOSPC,
        EIO) is cut back off the file and the frames are dropped, so the log stays whole and its size
        true; the error is raised."""
        if not self._buffer:
            return
        view = memoryview(b"".join(self._buffer))
        start = self._written
        self._buffer = []
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)
            self.size = start
            raise
        self._written = self.size
        self._dirty = True

    def sync(self) -> None:
        """Write what was appended, then fsync it (per the fsync policy)."""
        self.flush()
        if self.fsync and self._dirty:
            os.fsync(self._fd)
        self._dirty = False

    def read_at(self, offset: int, count: int) -> list[dict[str, Any]]:
        """Up to `count` records starting at `offset` (which must be a record boundary)."""
        if offset >= self._written:
            self.flush()  # records not synced yet (readers of a journal only read what was)
        out: list[dict[str, Any]] = []
        end = self.size
        while len(out) < count and offset < end:
            _magic, length, _crc = _HEADER.unpack(os.pread(self._fd, _HEADER.size, offset))
            body = os.pread(self._fd, length, offset + _HEADER.size)
            out.append(msgpack.unpackb(body, raw=False))
            offset += _HEADER.size + length
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.flush()
        with contextlib.suppress(OSError):
            os.close(self._fd)


def legacy_pack(record: dict[str, Any]) -> bytes:
    """A frame in the legacy framing (tests of the upgrade path write old files with it)."""
    body: bytes = msgpack.packb(record, use_bin_type=True)
    return _LEGACY_HEADER.pack(len(body), zlib.crc32(body)) + body
