"""Disk sinks for `wire.Assembler`: parts go straight to a temp file, never a whole item in memory.

An item is written at its parts' offsets into `<dir>/.<name>.part`, hashed, fsynced and renamed to its
final name only when its sha256 matches, so a file under its final name is always complete and verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from typing import Any

from podstream import wire

_EXTENSIONS = {
    "video/mp4": "mp4",
    "video/webm": "webm",
    "image/png": "png",
    "image/webp": "webp",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "application/json": "json",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def extension(mime: str) -> str:
    return _EXTENSIONS.get(mime, "bin")


def media_name(item: int, id: str, mime: str) -> str:
    """`{item:05d}-{id}.{ext}`, with the id reduced to safe characters: never a path taken from input."""
    safe = _UNSAFE.sub("_", id).strip("._")[:64]
    stem = f"{item:05d}-{safe}" if safe else f"{item:05d}"
    return f"{stem}.{extension(mime)}"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileSink:
    """Writes one item to `directory/media_name(...)` via a temp file; `result` is the final Path."""

    def __init__(
        self, directory: Path, item: int, id: str, mime: str, size: int, *, fsync: bool = True
    ) -> None:
        self.final = directory / media_name(item, id, mime)
        self.temp = directory / f".{self.final.name}.part"
        self.fsync = fsync
        self._fd = os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._hash = hashlib.sha256()
        self._hashed = 0  # bytes hashed so far, in order; parts that arrive early are hashed at the end

    def write(self, offset: int, data: bytes) -> None:
        os.pwrite(self._fd, data, offset)
        if offset == self._hashed:
            self._hash.update(data)
            self._hashed += len(data)

    def finish(self, sha256: str) -> tuple[bool, Any]:
        size = os.fstat(self._fd).st_size
        while self._hashed < size:  # out-of-order parts: hash the rest back from disk
            chunk = os.pread(self._fd, 1 << 20, self._hashed)
            self._hash.update(chunk)
            self._hashed += len(chunk)
        if self._hash.hexdigest() != sha256:
            self.abort()
            return False, None
        if self.fsync:
            os.fsync(self._fd)
        os.close(self._fd)
        os.replace(self.temp, self.final)
        if self.fsync:
            fsync_dir(self.final.parent)
        return True, self.final

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # already closed by a finished write
            os.close(self._fd)
        self.temp.unlink(missing_ok=True)


def file_sinks(directory: Path, *, fsync: bool = True) -> wire.SinkFactory:
    """A `wire.SinkFactory` writing every item of a job into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)

    def factory(item: int, id: str, mime: str, size: int) -> wire.ItemSink:
        return FileSink(directory, item, id, mime, size, fsync=fsync)

    return factory
