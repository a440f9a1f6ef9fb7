"""The data directory on local disk: creates, opens, lists and deletes jobs (`relay.storage.protocols.Jobs`).

Deleting a job (`Store.trash`) first renames its directory out of `jobs/` (atomic: the job is gone for every
new request at once), then removes the files. A job store with readers (`JobStore.reading`) keeps its open
files until the last reader is done, so a sweep never pulls a file out from under a subscriber.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from relay.storage.errors import JOB_ID, JobBroken, check_job_id
from relay.storage.job import JobHooks
from relay.storage.local.repair import rebuild
from relay.storage.local.store import DiskJobStore
from relay.storage.quota import DiskQuota


class Store:
    """The data directory: creates, opens, lists and deletes jobs."""

    def __init__(
        self,
        data_dir: Path,
        *,
        fsync: bool = True,
        tail: int = 1024,
        quota: DiskQuota | None = None,
        hooks: JobHooks | None = None,
    ) -> None:
        self.root = data_dir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)
        self.trash_dir = data_dir / "trash"
        self.fsync = fsync
        self.tail = tail
        self.quota = quota or DiskQuota()
        self.hooks = hooks or JobHooks()

    def _job_store(self, job: str) -> DiskJobStore:
        return DiskJobStore(
            self.root, job, fsync=self.fsync, tail=self.tail, quota=self.quota, hooks=self.hooks
        )

    def exists(self, job: str) -> bool:
        """Whether the job has a directory here (a journal, or a job.json whose journal was lost)."""
        directory = self.root / check_job_id(job)
        return (directory / "journal.log").exists() or (directory / "job.json").exists()

    def create(self, job: str, **meta: Any) -> DiskJobStore:
        store = self._job_store(job)
        store.open(meta={"job": job, "created_at": time.time(), **meta})
        return store

    def open(self, job: str) -> DiskJobStore:
        """An existing job (KeyError when there is none; `JobBroken` when its job.json is unreadable). A
        damaged journal is rebuilt from what survives (`relay.storage.local.repair`)."""
        if not self.exists(job):
            raise KeyError(job)
        stored = self.read_meta(job)
        store = self._job_store(job)
        try:
            store.open(stored=stored)
            rebuild(store)
            return store
        except BaseException:
            store.close()
            raise

    def read_meta(self, job: str) -> dict[str, Any]:
        """The job's job.json, or `JobBroken` saying why it cannot be read."""
        path = self.root / check_job_id(job) / "job.json"
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            raise JobBroken(job, "its job.json is missing") from None
        except IsADirectoryError:
            raise JobBroken(job, "its job.json is not a file") from None
        try:
            meta = json.loads(text)
        except ValueError as exc:
            raise JobBroken(job, f"its job.json is not valid JSON ({exc})") from None
        if not isinstance(meta, dict):
            raise JobBroken(job, "its job.json does not hold a JSON object")
        return meta

    def meta(self, job: str) -> dict[str, Any]:
        """The job's metadata (without opening its journal); {} when unreadable."""
        try:
            meta = json.loads((self.root / check_job_id(job) / "job.json").read_text())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

    def finished_at(self, job: str) -> float | None:
        """When the job finished (from its metadata, without opening its journal), or None."""
        value = self.meta(job).get("finished_at")
        return float(value) if isinstance(value, int | float) else None

    def measure(self) -> dict[str, int]:
        """Bytes on disk per job (files only, symlinks not followed)."""
        sizes: dict[str, int] = {}
        for job in self.job_ids():
            total = 0
            for dirpath, _dirs, names in os.walk(self.root / job):
                for name in names:
                    with contextlib.suppress(OSError):
                        total += os.lstat(os.path.join(dirpath, name)).st_size
            sizes[job] = total
        return sizes

    def due(self, now: float) -> list[str]:
        """Jobs that may be past their retention at `now`: every job here (the sweeper reads each one's
        deadline from its metadata; there is no index to ask)."""
        return self.job_ids()

    def job_ids(self) -> list[str]:
        ids = []
        for path in self.root.iterdir():
            if JOB_ID.fullmatch(path.name) and (
                (path / "journal.log").exists() or (path / "job.json").exists()
            ):
                ids.append(path.name)
        return sorted(ids)

    def trash(self, job: str) -> Path | None:
        """Move the job's directory out of `jobs/` (atomic); returns where it went, for `remove`."""
        directory = self.root / check_job_id(job)
        if not directory.exists():
            return None
        self.trash_dir.mkdir(exist_ok=True)
        target = self.trash_dir / f"{job}.{secrets.token_hex(4)}"
        os.rename(directory, target)
        return target

    def empty_trash(self) -> None:
        """Remove whatever an interrupted deletion left in the trash."""
        if self.trash_dir.is_dir():
            for path in self.trash_dir.iterdir():
                with contextlib.suppress(OSError):
                    self.remove(path)

    def delete(self, job: str) -> None:
        target = self.trash(job)
        if target is not None:
            self.remove(target)

    @staticmethod
    def remove(directory: Path) -> None:
        """Delete a directory tree without following symlinks."""
        if directory.is_symlink() or not directory.is_dir():
            directory.unlink(missing_ok=True)
            return
        for path in sorted(directory.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()
        directory.rmdir()
