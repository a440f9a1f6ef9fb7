"""The worker's output cache: every envelope of a job, kept so that a `resend` job can yield it again.

RunPod's SDK drops a stream item silently when its POST fails (a 4xx, a connection error), and a relay that
crashes between draining `/stream` and writing the answer loses what it drained. Either way the relay sees
a gap in the job's dense `seq`s and submits a `resend` job (`{"resend": {"job": J, "seqs": [...]}}`): the
worker that takes it answers from this cache, yielding the original envelopes (same job, run and seqs).

Where: `<volume>/podstream-cache` when the RunPod network volume is mounted (`PODSTREAM_VOLUME`, default
`/runpod-volume`): every worker of the endpoint sees it, so any of them can answer a resend. Otherwise a
temp directory (then only a worker on the same machine can). `PODSTREAM_CACHE_DIR` overrides both.

Layout (every name derived, never taken from a job id):

    <root>/<sha256(job)[:32]>/<sha256(run)[:16]>/run.json          {"job", "run", "created"}
    <root>/<job dir>/<run dir>/envelopes.jsonl                      each envelope yielded, parts without `data`
    <root>/<job dir>/<run dir>/<item>.bin                           the encoded file of each streamed item
    <root>/<job dir>/<run dir>/complete                             written after the last manifest page

A part is stored without its base64 `data` and rebuilt from the item's file (part k covers bytes
[k*L, min(size, (k+1)*L)) with L = ceil(size/parts), see `podstream.wire`), so the cache holds each file once.

Bounded: `sweep` (run when a job starts) deletes runs older than `ttl_s`, then the oldest jobs until the
total is under `max_bytes`; a single job that would exceed `max_bytes` stops caching its items (it logs).
Failing to write the cache never fails a job: it only makes those envelopes unrecoverable.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

from podstream import wire

log = logging.getLogger("worker.cache")

DEFAULT_TTL_S: Final = 24 * 3600.0
DEFAULT_MAX_BYTES: Final = 4 * 1024**3
ENVELOPES: Final = "envelopes.jsonl"
RUN_META: Final = "run.json"
COMPLETE: Final = "complete"


def _digest(text: str, chars: int) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:chars]


def default_root(environ: Mapping[str, str] = os.environ) -> Path:
    """`PODSTREAM_CACHE_DIR`, else the network volume's `podstream-cache` when mounted, else a temp dir."""
    explicit = environ.get("PODSTREAM_CACHE_DIR")
    if explicit:
        return Path(explicit)
    volume = Path(environ.get("PODSTREAM_VOLUME") or "/runpod-volume")
    if volume.is_dir():
        return volume / "podstream-cache"
    return Path(tempfile.gettempdir()) / "podstream-cache"


@dataclass(frozen=True)
class CacheConfig:
    """`PODSTREAM_CACHE_DIR`, `PODSTREAM_CACHE_TTL_S`, `PODSTREAM_CACHE_MAX_BYTES` (0 turns the cache off)."""

    root: Path = field(default_factory=default_root)
    ttl_s: float = DEFAULT_TTL_S
    max_bytes: int = DEFAULT_MAX_BYTES

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.ttl_s > 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> CacheConfig:
        def number(name: str, default: float) -> float:
            raw = environ.get(name)
            if raw is None or raw == "":
                return default
            try:
                return float(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None

        return cls(
            root=default_root(environ),
            ttl_s=number("PODSTREAM_CACHE_TTL_S", DEFAULT_TTL_S),
            max_bytes=int(number("PODSTREAM_CACHE_MAX_BYTES", DEFAULT_MAX_BYTES)),
        )


class OutputCache:
    """The cache directory. `writer` records one run of a job; `open` reads one back; `sweep` bounds it."""

    def __init__(self, config: CacheConfig | None = None) -> None:
        self.config = config or CacheConfig()
        self.root = self.config.root

    def job_dir(self, job: str) -> Path:
        return self.root / _digest(job, 32)

    def writer(self, job: str, run: str) -> CacheWriter:
        return CacheWriter(self, job, run)

    def open(self, job: str, run: str | None = None) -> CachedRun | None:
        """The cached run `run` of `job` (default: its most recent run), or None when it is not here."""
        job_dir = self.job_dir(job)
        if run is not None:
            candidates = [job_dir / _digest(run, 16)]
        else:
            try:
                candidates = [p for p in job_dir.iterdir() if p.is_dir()]
            except OSError:
                return None
        best: tuple[float, CachedRun] | None = None
        for directory in candidates:
            cached = CachedRun.load(directory)
            if cached is None or cached.job != job or (run is not None and cached.run != run):
                continue
            if best is None or cached.created > best[0]:
                best = (cached.created, cached)
        return best[1] if best else None

    def sweep(self, now: float | None = None) -> list[Path]:
        """Delete runs past the TTL, then the oldest jobs while the cache is over `max_bytes`."""
        now = time.time() if now is None else now
        removed: list[Path] = []
        try:
            job_dirs = [p for p in self.root.iterdir() if p.is_dir()]
        except OSError:
            return removed
        sizes: list[tuple[float, int, Path]] = []
        for job_dir in job_dirs:
            newest, total = 0.0, 0
            for run_dir in _subdirs(job_dir):
                mtime = _mtime(run_dir)
                if now - mtime > self.config.ttl_s:
                    shutil.rmtree(run_dir, ignore_errors=True)
                    removed.append(run_dir)
                    continue
                newest = max(newest, mtime)
                total += _tree_bytes(run_dir)
            if total == 0 and not _subdirs(job_dir):
                with contextlib.suppress(OSError):
                    job_dir.rmdir()
                continue
            sizes.append((newest, total, job_dir))
        used = sum(size for _, size, _ in sizes)
        for _, size, job_dir in sorted(sizes):
            if used <= self.config.max_bytes:
                break
            shutil.rmtree(job_dir, ignore_errors=True)
            removed.append(job_dir)
            used -= size
        return removed


def _subdirs(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


def _mtime(path: Path) -> float:
    """The latest modification of a run: its envelope log is appended to for as long as the run goes."""
    times = [0.0]
    for name in (ENVELOPES, RUN_META, COMPLETE):
        with contextlib.suppress(OSError):
            times.append((path / name).stat().st_mtime)
    return max(times)


def _tree_bytes(path: Path) -> int:
    total = 0
    for entry in path.iterdir():
        with contextlib.suppress(OSError):
            total += entry.stat().st_size
    return total


class CacheWriter:
    """Records one run of one job. Not thread-safe: `put_item` runs in the encode thread before the item's
    first part is yielded, `record` on the event loop as each envelope is yielded; they touch different files.
    """

    def __init__(self, cache: OutputCache, job: str, run: str) -> None:
        self.cache = cache
        self.job = job
        self.run = run
        self.dir = cache.job_dir(job) / _digest(run, 16)
        self.bytes = 0
        self.disabled = False
        self._log: IO[str] | None = None
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            meta = {"job": job, "run": run, "created": time.time()}
            _write_atomic(self.dir / RUN_META, json.dumps(meta).encode())
            self._log = open(self.dir / ENVELOPES, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        except OSError as exc:
            self._fail(f"cannot create the output cache in {self.dir}: {exc}")

    def _fail(self, message: str) -> None:
        if not self.disabled:
            log.warning("job %s: %s; its envelopes cannot be resent", self.job, message)
        self.disabled = True

    def put_item(self, item: int, data: bytes) -> bool:
        """Store an item's encoded file (before its parts are yielded). False when it was not cached."""
        if self.disabled:
            return False
        if self.bytes + len(data) > self.cache.config.max_bytes:
            log.warning(
                "job %s: item %d would take the output cache over its limit; not cached", self.job, item
            )
            return False
        try:
            _write_atomic(self.dir / f"{int(item)}.bin", data)
        except OSError as exc:
            log.warning("job %s: caching item %d failed: %s", self.job, item, exc)
            return False
        self.bytes += len(data)
        return True

    def record(self, envelope: Mapping[str, Any]) -> None:
        """Append a yielded envelope (a part without its data)."""
        if self._log is None:
            return
        meta = (
            {k: v for k, v in envelope.items() if k != "data"}
            if envelope.get("type") == wire.PART
            else envelope
        )
        try:
            self._log.write(json.dumps(meta, separators=(",", ":")) + "\n")
            # Flushed per envelope: a worker killed mid-job still leaves everything it yielded resendable.
            self._log.flush()
            if envelope.get("type") == wire.MANIFEST and envelope.get("page") == envelope.get("pages", 1) - 1:
                (self.dir / COMPLETE).write_bytes(b"")
        except OSError as exc:
            self._fail(f"writing the output cache failed: {exc}")
            self.close()

    def close(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temp, "wb") as f:
            f.write(data)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


@dataclass
class Selection:
    """What a resend asks for: explicit seqs, every seq after `after`, and/or every envelope of `items`."""

    seqs: frozenset[int] = frozenset()
    after: int | None = None
    items: frozenset[int] = frozenset()

    def wants(self, envelope: Mapping[str, Any]) -> bool:
        seq = envelope.get("seq")
        if not isinstance(seq, int):
            return False
        if seq in self.seqs or (self.after is not None and seq > self.after):
            return True
        return (
            envelope.get("type") in (wire.PART, wire.REF, wire.ERROR) and envelope.get("item") in self.items
        )


@dataclass
class CachedRun:
    """One cached run, read back. `envelopes(selection)` rebuilds the selected envelopes in seq order."""

    directory: Path
    job: str
    run: str
    created: float
    complete: bool
    #: After `envelopes` ran: selected envelopes that could not be rebuilt (their item file is gone or short).
    unavailable: list[int] = field(default_factory=list)
    #: After `envelopes` ran: the highest seq in the log.
    last_seq: int = 0

    @classmethod
    def load(cls, directory: Path) -> CachedRun | None:
        try:
            meta = json.loads((directory / RUN_META).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if (
            not isinstance(meta, dict)
            or not isinstance(meta.get("job"), str)
            or not isinstance(meta.get("run"), str)
        ):
            return None
        created = meta.get("created")
        return cls(
            directory,
            meta["job"],
            meta["run"],
            float(created) if isinstance(created, int | float) else 0.0,
            (directory / COMPLETE).exists(),
        )

    def envelopes(self, selection: Selection) -> Generator[dict[str, Any], None, None]:
        """The selected envelopes exactly as first yielded (parts with their data), in seq order."""
        self.unavailable = []
        files: dict[int, IO[bytes] | None] = {}
        try:
            for meta in self._log():
                self.last_seq = max(self.last_seq, meta["seq"])
                if not selection.wants(meta):
                    continue
                if meta.get("type") != wire.PART:
                    yield meta
                    continue
                data = self._part_data(meta, files)
                if data is None:
                    self.unavailable.append(meta["seq"])
                    continue
                yield {**meta, "data": base64.b64encode(data).decode("ascii")}
        finally:
            for f in files.values():
                if f is not None:
                    f.close()

    def seqs(self) -> set[int]:
        return {meta["seq"] for meta in self._log()}

    def _log(self) -> Iterator[dict[str, Any]]:
        try:
            f = open(self.directory / ENVELOPES, encoding="utf-8")  # noqa: SIM115
        except OSError:
            return
        with f:
            for line in f:
                try:
                    meta = json.loads(line)
                except ValueError:
                    continue  # a torn last line (the worker was killed mid-write)
                if isinstance(meta, dict) and type(meta.get("seq")) is int:
                    yield meta

    def _part_data(self, meta: dict[str, Any], files: dict[int, IO[bytes] | None]) -> bytes | None:
        item, size, parts, k = meta.get("item"), meta.get("size"), meta.get("parts"), meta.get("part")
        if not all(type(v) is int for v in (item, size, parts, k)):
            return None
        assert (
            isinstance(item, int) and isinstance(size, int) and isinstance(parts, int) and isinstance(k, int)
        )
        if item not in files:
            try:
                files[item] = open(self.directory / f"{item}.bin", "rb")  # noqa: SIM115 (closed in envelopes)
            except OSError:
                files[item] = None
        f = files[item]
        if f is None or os.fstat(f.fileno()).st_size != size:
            return None
        length = wire.part_length(size, parts)
        start, end = k * length, min(size, (k + 1) * length)
        data = os.pread(f.fileno(), max(0, end - start), start)
        return data if len(data) == max(0, end - start) else None
