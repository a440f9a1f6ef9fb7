"""Fault injection: mutable switches a test flips while the emulator runs (`emu.faults`).

Stream items are counted per job, from 1, in the order their job-stream POSTs arrive (a retried POST is
the same item: the count only moves on once an item has been answered with something other than a 5xx).
Every switch is safe to flip from another thread: each is read once per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Faults:
    # Item n of every job is answered 200 but thrown away (lost inside "RunPod").
    drop_stream_items: set[int] = field(default_factory=set)
    # Item n of every job is answered 400 (the SDK logs and drops it, like an oversized item).
    reject_stream_items: set[int] = field(default_factory=set)
    # Item n of every job is answered 503 this many times before it is accepted (the SDK tries 3 times).
    stream_item_5xx: dict[int, int] = field(default_factory=dict)
    # The next job-done POSTs (any job) are answered 503, this many of them.
    job_done_5xx: int = 0
    # Scripted answers for the next client `/stream` calls, first one first: 429, 500, 503, ... (200 = normal).
    stream_responses: list[int] = field(default_factory=list)
    # Scripted answers for the next client `/status` calls.
    status_responses: list[int] = field(default_factory=list)
    # Every client `/stream` answer is delayed this long (after the long-poll, before the body is sent).
    stream_delay_s: float = 0.0
    # SIGKILL the worker process (and its ping process) that posts item n of a job (emulator-spawned only).
    kill_worker_on_stream_item: int | None = None
    # Pings from these worker ids are ignored, as if their heartbeat had stopped.
    ignore_pings_from: set[str] = field(default_factory=set)
    # Terminal jobs are deleted this many seconds after they end, instead of the configured retention.
    retention_s: float | None = None

    def take_stream_response(self) -> int:
        return self.stream_responses.pop(0) if self.stream_responses else 200

    def take_status_response(self) -> int:
        return self.status_responses.pop(0) if self.status_responses else 200

    def take_job_done_5xx(self) -> bool:
        if self.job_done_5xx > 0:
            self.job_done_5xx -= 1
            return True
        return False

    def reset(self) -> None:
        """Back to no faults at all."""
        fresh = Faults()
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(fresh, name))
