"""Storage errors and job ids: what every storage peer raises, and the one rule for a job's name."""

from __future__ import annotations

import errno
import re
from typing import Final

from relay.errors import RelayError

JOB_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


class StoreError(RelayError):
    pass


class QuotaExceeded(StoreError):
    """Storing this would take the data directory over its disk quota."""


class JobBroken(StoreError):
    """The job's directory cannot be opened as a job (its `job.json` is missing or unreadable).

    The job is reported as broken (`GET /v1/jobs` lists it with `status: "broken"` and the reason; a
    websocket `sub` gets an `err` frame) and its files are left as they are for an operator; every other
    job goes on working."""

    def __init__(self, job: str, reason: str) -> None:
        super().__init__(f"job {job} is broken: {reason}")
        self.job = job
        self.reason = reason


class MediaGone(StoreError):
    """An item's file is gone for good: deleted, or damaged (it no longer matches its size or sha256)."""


class MediaRetry(StoreError):
    """Reading an item's file failed for a reason that passes (EMFILE, ENOSPC, EIO, ...): try again later."""


#: OSErrors that say "not now" rather than "never": too many open files, a full disk, an I/O hiccup.
TRANSIENT_ERRNOS: Final = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.ENOMEM,
     errno.EINTR, errno.EBUSY, errno.ETIMEDOUT}
)  # fmt: skip


def transient(exc: OSError) -> bool:
    return exc.errno in TRANSIENT_ERRNOS


class BadJobId(StoreError, ValueError):
    pass


def check_job_id(job: str) -> str:
    if not isinstance(job, str) or not JOB_ID.fullmatch(job) or ".." in job:
        raise BadJobId("a job id is 1-128 characters: letters, digits and _ . : - (not starting with one)")
    return job
