"""Disk sinks for `wire.Assembler`: parts go straight to a temp file, never a whole item in memory.

An item is written at its parts' offsets into `<dir>/.<name>.part`, hashed, fsynced and renamed to its
final name only when its sha256 matches, so a file under its final name is always complete and verified.

A transfer stopped while finishing a file (Ctrl-C between verifying, fsyncing and renaming) leaves either a
complete `.part` or the final file; `kept_file` finds such a file for an item again, checks it against the
item's size and sha256 and puts it in place, so a resumed transfer keeps it instead of receiving it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from pathlib import Path
from stat import S_ISREG
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


class PartFile:
    """The verify core every item sink shares (this module's `FileSink`, the relay's `MediaSink` and its
    bucket spool `S3MediaSink`): an item's parts written at their offsets into one open file, in any order,
    hashed as they come when in order; `digest` hashes whatever arrived early back from the file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._hash = hashlib.sha256()
        self._hashed = 0  # bytes hashed so far, in order

    def write(self, offset: int, data: bytes) -> None:
        os.pwrite(self.fd, data, offset)
        if offset == self._hashed:
            self._hash.update(data)
            self._hashed += len(data)

    def digest(self) -> tuple[int, str]:
        """(size, sha256 hex) of the file as it is now."""
        size = os.fstat(self.fd).st_size
        while self._hashed < size:  # out-of-order parts: hash the rest back from disk
            chunk = os.pread(self.fd, 1 << 20, self._hashed)
            self._hash.update(chunk)
            self._hashed += len(chunk)
        return size, self._hash.hexdigest()

    def keep(self, temp: Path, final: Path, *, fsync: bool, sync_dir: bool = True) -> None:
        """The verified file becomes `final`: fsynced, closed, renamed, its directory fsynced (unless
        `sync_dir` is False: the caller fsyncs the directory later, once for several files)."""
        if fsync:
            os.fsync(self.fd)
        self.close()
        os.replace(temp, final)
        if fsync and sync_dir:
            fsync_dir(final.parent)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class FileSink:
    """Writes one item to `directory/media_name(...)` via a temp file; `result` is the final Path."""

    def __init__(
        self, directory: Path, item: int, id: str, mime: str, size: int, *, fsync: bool = True
    ) -> None:
        self.final = directory / media_name(item, id, mime)
        self.temp = directory / f".{self.final.name}.part"
        self.fsync = fsync
        self._file = PartFile(os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644))

    def write(self, offset: int, data: bytes) -> None:
        self._file.write(offset, data)

    def finish(self, sha256: str) -> tuple[bool, Any]:
        if self._file.digest()[1] != sha256:
            self.abort()
            return False, None
        self._file.keep(self.temp, self.final, fsync=self.fsync)
        return True, self.final

    def abort(self) -> None:
        self._file.close()
        self.temp.unlink(missing_ok=True)

    def close(self) -> None:
        """Stop without deleting: a `.part` that `finish` was interrupted on stays for `kept_file`."""
        self._file.close()


def kept_file(
    directory: Path, item: int, id: str, mime: str, size: int, sha256: str, *, fsync: bool = True
) -> Path | None:
    """The item's file from an earlier transfer, verified and in place, or None when there is none.

    Looks for the final file, then for its `.part`: the first one that has `size` bytes and `sha256` is
    fsynced, renamed to the final name (a `.part`) and its directory fsynced, and its final path returned.
    A file of another size is not read; one that does not match is left for the next download to replace.
    """
    final = directory / media_name(item, id, mime)
    for path in (final, directory / f".{final.name}.part"):
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        file = PartFile(fd)
        try:
            stat = os.fstat(fd)
            if not S_ISREG(stat.st_mode) or stat.st_size != size or file.digest()[1] != sha256:
                continue
            file.keep(path, final, fsync=fsync)
            return final
        finally:
            file.close()
    return None


def file_sinks(directory: Path, *, fsync: bool = True) -> wire.SinkFactory:
    """A `wire.SinkFactory` writing every item of a job into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)

    def factory(item: int, id: str, mime: str, size: int) -> wire.ItemSink:
        return FileSink(directory, item, id, mime, size, fsync=fsync)

    return factory
