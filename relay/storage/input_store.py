"""Staged job inputs at rest: where an uploaded image waits for the worker that fetches it.

Inputs are content-addressed and kept per owner (the API key that staged them, or the key that minted the
input token): `<owner>/<sha256>`, where the owner is a digest of the key's name, so a path never carries a
key name and another key's inputs can be neither listed nor read. Re-staging the same bytes is free.

Two places, one surface (`InputStore`):
- `DiskInputs` (one relay on local disk): `<data_dir>/inputs/<owner>/<sha256>`, served by the relay itself
  at a signed URL (`GET /v1/inputs/<owner>/<sha256>?exp=&sig=`).
- `BucketInputs` (cluster mode): the object `<prefix>/_inputs/<owner>/<sha256>` in the media bucket, with
  its Content-Type, fetched by the worker at a SigV4 presigned URL; any replica stages and finds it.

Both receive a body into a local spool file first (hashed and checked as it arrives), so nothing reaches
the final place unverified. Lifecycle (`sweep`): an input no job refers to is deleted `input_ttl_s` after
it was last staged or looked up; one a stored job refers to is kept as long as that job is (its retention).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from podstream.images import HEAD_BYTES, sniff
from podstream.sinks import fsync_dir
from relay.api.uploads import TempFile

if TYPE_CHECKING:
    from relay.storage.cluster.s3_media import S3MediaStore

#: What a job input's `image` says to mean "the input I staged with these bytes".
REF_PREFIX: Final = "input:"
OWNER_CHARS: Final = 20
HEX64: Final = re.compile(r"^[0-9a-f]{64}$")
OWNER: Final = re.compile(rf"^[0-9a-f]{{{OWNER_CHARS}}}$")
#: The longest a SigV4 presigned URL may live.
PRESIGN_MAX_S: Final = 7 * 24 * 3600
#: A spool file left by an upload that never finished is removed after this long.
_SPOOL_GRACE_S: Final = 3600.0
#: Bucket requests at a time for one batch lookup (within botocore's default pool of 10 connections).
_STAT_THREADS: Final = 8


def owner_of(name: str) -> str:
    """The namespace of a principal's inputs: a digest of its name (no key name on disk or in a URL)."""
    return hashlib.sha256(b"podstream inputs\n" + name.encode()).hexdigest()[:OWNER_CHARS]


def parse_ref(value: str) -> str | None:
    """The sha256 of an `input:<sha256>` reference, or None when `value` is not one."""
    if not value.startswith(REF_PREFIX):
        return None
    digest = value[len(REF_PREFIX) :].strip().lower()
    return digest if HEX64.match(digest) else None


@dataclass(frozen=True)
class StagedInput:
    owner: str
    sha256: str
    size: int
    mime: str

    @property
    def ref(self) -> str:
        return REF_PREFIX + self.sha256

    @property
    def path(self) -> str:
        """The relay route that serves it (signed), in local mode."""
        return f"/v1/inputs/{self.owner}/{self.sha256}"


class InputQuotaExceeded(Exception):
    """Staging this would take the key over its `input_quota_bytes`."""


class InputQuota:
    """Bytes of staged inputs per owner against a per-owner limit (0 = none). An owner's bytes are measured
    from the store on first use (and after each sweep); uploads reserve before their first byte is written."""

    def __init__(self, limit: int, measure: Callable[[str], int]) -> None:
        self.limit = limit
        self._measure = measure
        self._used: dict[str, int] = {}
        self._lock = threading.Lock()

    def used(self, owner: str) -> int:
        with self._lock:
            known = self._used.get(owner)
        if known is None:
            measured = self._measure(owner)
            with self._lock:
                known = self._used.setdefault(owner, measured)
        return known

    def reserve(self, owner: str, nbytes: int) -> None:
        used = self.used(owner)
        with self._lock:
            used = self._used.get(owner, used)
            if self.limit and used + nbytes > self.limit:
                raise InputQuotaExceeded(
                    f"this key holds {used} bytes of staged inputs; {nbytes} more would pass its quota of "
                    f"{self.limit} bytes (unreferenced inputs expire; jobs' inputs go with their retention)"
                )
            self._used[owner] = used + nbytes

    def try_reserve(self, owner: str, nbytes: int) -> bool:
        """`reserve` without measuring (never blocks: for the event loop): False, nothing reserved, when the
        owner's bytes are not known yet (then `reserve` in a thread)."""
        with self._lock:
            used = self._used.get(owner)
            if used is None:
                return False
            if self.limit and used + nbytes > self.limit:
                raise InputQuotaExceeded(
                    f"this key holds {used} bytes of staged inputs; {nbytes} more would pass its quota of "
                    f"{self.limit} bytes (unreferenced inputs expire; jobs' inputs go with their retention)"
                )
            self._used[owner] = used + nbytes
            return True

    def release(self, owner: str, nbytes: int) -> None:
        with self._lock:
            if owner in self._used:
                self._used[owner] = max(0, self._used[owner] - nbytes)

    def forget(self) -> None:
        """Measure every owner afresh on next use (after a sweep deleted files)."""
        with self._lock:
            self._used.clear()


class InputStore(Protocol):
    """Where staged inputs live. Blocking calls: the routes run them in worker threads."""

    def spool(self) -> TempFile:
        """A new spool file to receive a body into, made by its first write: this call does no I/O (the
        event loop makes it)."""
        ...

    def stat(self, owner: str, sha256: str, *, touch: bool = False) -> StagedInput | None:
        """The owner's input with these bytes, or None. `touch` restarts its unreferenced expiry."""
        ...

    def stat_many(
        self, owner: str, sha256s: Collection[str], *, touch: bool = False
    ) -> dict[str, StagedInput]:
        """`stat` of each: those the owner holds, by sha256."""
        ...

    def keep(self, temp: TempFile, owner: str, sha256: str, mime: str) -> StagedInput:
        """Store a verified spool file as the owner's input (it replaces nothing: same bytes, same name)."""
        ...

    def presign(self, staged: StagedInput, ttl_s: float, method: str = "GET") -> str | None:
        """A URL of the bytes that needs no relay (cluster mode), good for `method` (GET or HEAD: SigV4 signs
        the method), or None: the relay signs and serves its own route."""
        ...

    def measure(self, owner: str) -> int:
        """Bytes the owner's inputs hold now."""
        ...

    def sweep(self, now: float, ttl_s: float, held: Collection[tuple[str, str]]) -> list[tuple[str, str]]:
        """Delete inputs older than `ttl_s` (since last staged or looked up) that no stored job holds;
        returns the (owner, sha256) deleted."""
        ...


class DiskInputs:
    """Inputs in `<data_dir>/inputs/<owner>/<sha256>` (one relay on local disk)."""

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = root
        self.fsync = fsync
        self._spool = root / ".spool"

    def file(self, owner: str, sha256: str) -> Path:
        if not OWNER.match(owner) or not HEX64.match(sha256):
            raise ValueError("not an input name")  # callers check first; never a path from a request
        return self.root / owner / sha256

    def spool(self) -> TempFile:
        """A spool file made by its first write (its directory only when missing: no mkdir per upload)."""
        return TempFile(self._spool, lazy=True, parents=True)

    def stat(self, owner: str, sha256: str, *, touch: bool = False) -> StagedInput | None:
        path = self.file(owner, sha256)
        try:
            with open(path, "rb") as f:
                head = f.read(HEAD_BYTES)
                size = os.fstat(f.fileno()).st_size
            if touch:
                os.utime(path)
        except FileNotFoundError:
            return None
        return StagedInput(owner, sha256, size, sniff(head) or "application/octet-stream")

    def stat_many(
        self, owner: str, sha256s: Collection[str], *, touch: bool = False
    ) -> dict[str, StagedInput]:
        held = {}
        for sha256 in sha256s:
            staged = self.stat(owner, sha256, touch=touch)
            if staged is not None:
                held[sha256] = staged
        return held

    def keep(self, temp: TempFile, owner: str, sha256: str, mime: str) -> StagedInput:
        target = self.file(owner, sha256)
        size = temp.size
        try:
            temp.keep(target, fsync=self.fsync)
        except FileNotFoundError:  # the owner's first input: its directory is made then, not per upload
            # (several first uploads at once all come here: each makes sure of the directory and its entry)
            target.parent.mkdir(parents=True, exist_ok=True)
            if self.fsync:
                fsync_dir(target.parent.parent)  # the new directory's entry is durable too
            temp.keep(target, fsync=self.fsync)  # a spool file gone (FileNotFoundError again) is not retried
        return StagedInput(owner, sha256, size, mime)

    def presign(self, staged: StagedInput, ttl_s: float, method: str = "GET") -> str | None:
        return None

    def measure(self, owner: str) -> int:
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root / owner):
                with contextlib.suppress(FileNotFoundError):
                    total += entry.stat(follow_symlinks=False).st_size
        return total

    def sweep(self, now: float, ttl_s: float, held: Collection[tuple[str, str]]) -> list[tuple[str, str]]:
        removed: list[tuple[str, str]] = []
        _clean_spool(self._spool, now)
        try:
            owners = [e for e in os.scandir(self.root) if OWNER.match(e.name)]
        except FileNotFoundError:
            return removed
        for owner in owners:
            with contextlib.suppress(FileNotFoundError):
                for entry in os.scandir(owner.path):
                    key = (owner.name, entry.name)
                    if not HEX64.match(entry.name) or key in held:
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        if entry.stat(follow_symlinks=False).st_mtime + ttl_s <= now:
                            os.unlink(entry.path)
                            removed.append(key)
        if removed and self.fsync:
            for owner_name in {owner for owner, _sha in removed}:
                with contextlib.suppress(OSError):
                    fsync_dir(self.root / owner_name)
        return removed


class BucketInputs:
    """Inputs as objects `<prefix>/_inputs/<owner>/<sha256>` of the media bucket (cluster mode). `_inputs`
    can never be a job id (ids do not start with `_`), so a job's deletion never reaches them."""

    def __init__(self, media: S3MediaStore, spool_dir: Path) -> None:
        self.media = media
        self._spool = spool_dir

    def key(self, owner: str, sha256: str) -> str:
        if not OWNER.match(owner) or not HEX64.match(sha256):
            raise ValueError("not an input name")
        return self.media.url.key("_inputs", owner, sha256)

    def spool(self) -> TempFile:
        return TempFile(self._spool, lazy=True, parents=True)

    def stat(self, owner: str, sha256: str, *, touch: bool = False) -> StagedInput | None:
        key = self.key(owner, sha256)
        head = self.media.head(key)
        if head is None:
            return None
        if touch:  # a copy onto itself restarts its LastModified, which `sweep` reads
            self.media.touch(key, head)
        return StagedInput(owner, sha256, int(head["ContentLength"]), str(head.get("ContentType") or ""))

    def stat_many(
        self, owner: str, sha256s: Collection[str], *, touch: bool = False
    ) -> dict[str, StagedInput]:
        """A HEAD (and, when held and `touch`, a copy) per object, `_STAT_THREADS` at a time."""
        if len(sha256s) <= 1:
            return {sha: staged for sha in sha256s if (staged := self.stat(owner, sha, touch=touch))}
        with ThreadPoolExecutor(min(_STAT_THREADS, len(sha256s)), thread_name_prefix="input-stat") as pool:
            found = pool.map(lambda sha: self.stat(owner, sha, touch=touch), sha256s)
            return {staged.sha256: staged for staged in found if staged is not None}

    def keep(self, temp: TempFile, owner: str, sha256: str, mime: str) -> StagedInput:
        size = temp.size
        temp.close()
        try:
            self.media.upload(self.key(owner, sha256), temp.path, size, sha256, content_type=mime)
        finally:
            temp.discard()
        return StagedInput(owner, sha256, size, mime)

    def presign(self, staged: StagedInput, ttl_s: float, method: str = "GET") -> str | None:
        key = self.key(staged.owner, staged.sha256)
        return self.media.presign(key, min(ttl_s, PRESIGN_MAX_S), method)

    def measure(self, owner: str) -> int:
        return sum(
            size for _key, size, _modified in self.media.list(self.media.url.key("_inputs", owner) + "/")
        )

    def sweep(self, now: float, ttl_s: float, held: Collection[tuple[str, str]]) -> list[tuple[str, str]]:
        removed: list[tuple[str, str]] = []
        stale = []
        for key, _size, modified in self.media.list(self.media.url.key("_inputs") + "/"):
            owner, sha256 = key.rsplit("/", 2)[-2:]
            if (owner, sha256) in held or modified + ttl_s > now:
                continue
            stale.append(key)
            removed.append((owner, sha256))
        self.media.delete_keys(stale)
        _clean_spool(self._spool, now)
        return removed


def _clean_spool(directory: Path, now: float) -> None:
    """Remove spool files that uploads cut off (a crash, a client gone) left behind."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            with contextlib.suppress(FileNotFoundError):
                if entry.stat(follow_symlinks=False).st_mtime + _SPOOL_GRACE_S <= now:
                    os.unlink(entry.path)
