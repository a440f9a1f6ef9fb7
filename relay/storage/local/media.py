"""Media files on local disk: one item's sink while its parts arrive, and hashing a stored file."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from podstream.sinks import PartFile, media_name


class MediaSink:
    """A `wire.ItemSink` writing one item at its parts' offsets into a temp file, renamed when verified.

    Like `podstream.sinks.FileSink`, plus resuming: a sink created while the poller replays its ingest log
    after a restart (`replaying`) ignores the writes (their bytes are already on disk) and, once live again,
    appends to the existing temp file and hashes it back from disk at `finish`.
    """

    def __init__(
        self,
        directory: Path,
        item: int,
        id: str,
        mime: str,
        size: int,
        *,
        fsync: bool,
        replaying: bool,
        refused: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
        on_abort: Callable[[], None] | None = None,
        on_stored: Callable[[], None] | None = None,
        on_renamed: Callable[[Path], None] | None = None,
    ):
        self.final = directory / media_name(item, id, mime)
        self.temp = directory / f".{self.final.name}.part"
        self.size = size
        self.fsync = fsync
        self.replaying = replaying
        #: Why this item is not stored (the disk quota): nothing is written and it finishes as failed.
        self.refused = refused
        self.on_bytes = on_bytes
        #: Called once if the item is abandoned (its quota reservation goes back), or once it is stored.
        self.on_abort = on_abort
        self.on_stored = on_stored
        #: Given the directory of a file renamed into place, it fsyncs that directory later (the job store's
        #: group commit, before the file's record is written); without it, the directory is fsynced at once.
        self.on_renamed = on_renamed
        self._file: PartFile | None = None
        if not replaying and refused is None:
            self._file = PartFile(os.open(self.temp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644))

    def _open(self) -> PartFile:
        if self._file is None:  # live again after a replay: the parts written before it are in the file
            self._file = PartFile(os.open(self.temp, os.O_RDWR | os.O_CREAT, 0o644))
        return self._file

    def write(self, offset: int, data: bytes) -> None:
        if self.replaying or self.refused is not None:
            return
        self._open().write(offset, data)
        if self.on_bytes is not None:
            self.on_bytes(len(data))

    def finish(self, sha256: str) -> tuple[bool, Any]:
        if self.replaying:  # it was finished before the restart: the outcome is on disk
            return (True, self.final) if self.final.exists() else (False, None)
        if self.refused is not None:
            # Every part arrived (nothing is lost in transit, so no gap and no resend): the store journals
            # the item as refused, not as stored (`JobStore.record`).
            return True, self.final
        file = self._open()
        size, digest = file.digest()
        if size != self.size or digest != sha256:
            self.abort()
            return False, None
        file.keep(self.temp, self.final, fsync=self.fsync, sync_dir=self.on_renamed is None)
        if self.on_renamed is not None:
            self.on_renamed(self.final.parent)
        self._file = None
        if self.on_stored is not None:
            self.on_stored()
        return True, self.final

    def abort(self) -> None:
        if self.on_abort is not None:
            self.on_abort()
            self.on_abort = None
        if self._file is not None:
            self._file.close()
            self._file = None
        self.temp.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
