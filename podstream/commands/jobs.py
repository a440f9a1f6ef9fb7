"""`podstream jobs`: list the jobs a relay knows (GET /v1/jobs), newest first."""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from podstream import problems
from podstream.cli import CommandError
from podstream.submit import relay_error_text

DEFAULT_RELAY = "http://127.0.0.1:8700"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--relay", metavar="URL", default=os.environ.get("PODSTREAM_RELAY", DEFAULT_RELAY),
        help=f"the relay's URL (env PODSTREAM_RELAY, default {DEFAULT_RELAY})",
    )  # fmt: skip
    parser.add_argument(
        "--key", metavar="KEY", default=os.environ.get("PODSTREAM_API_KEY"), help="relay API key"
    )
    parser.add_argument("--json", action="store_true", help="print the relay's JSON answer")
    parser.add_argument("--unfinished", action="store_true", help="only jobs that have not finished")


def fetch(relay: str, key: str | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.get(f"{relay.rstrip('/')}/v1/jobs", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        reached = problems.sentence(problems.Code.RELAY_UNREACHABLE, url=relay)
        raise CommandError(f"{reached}: {exc or type(exc).__name__}") from None
    if response.status_code != 200:
        refused = problems.refusal(response.status_code, response.text, credential="key" if key else None)
        if refused is not None:
            raise CommandError(f"{refused[1]} (HTTP {response.status_code}{_hint(key)})")
        raise CommandError(f"the relay answered HTTP {response.status_code}: {relay_error_text(response)}")
    try:
        jobs = response.json()["jobs"]
    except (ValueError, KeyError, TypeError):
        raise CommandError("the relay's answer is not a job list") from None
    if not isinstance(jobs, list):
        raise CommandError("the relay's answer is not a job list")
    return jobs


def _hint(key: str | None) -> str:
    return "" if key else "; give one with --key or PODSTREAM_API_KEY"


def by_age(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Newest first (as `ls -t`): the job just submitted is the first line; jobs of unknown age last."""

    def created(job: dict[str, Any]) -> float:
        value = job.get("created_at")
        return (
            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float("-inf")
        )

    return sorted(jobs, key=created, reverse=True)


def format_table(jobs: list[dict[str, Any]], now: float | None = None) -> str:
    now = time.time() if now is None else now
    rows = [("JOB", "STATUS", "ITEMS", "ERRORS", "EVENTS", "AGE", "STATE")]
    for job in jobs:
        created = job.get("created_at")
        age = _age(now - float(created)) if isinstance(created, int | float) else "-"
        state = "done" if job.get("finished") else ("polling" if job.get("polling") else "idle")
        rows.append(
            (str(job.get("id")), str(job.get("status")), str(job.get("items", 0)), str(job.get("errors", 0)),
             str(job.get("head", 0)), age, state)
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def run(args: argparse.Namespace) -> int:
    jobs = by_age(fetch(args.relay, args.key))
    if args.unfinished:
        jobs = [j for j in jobs if not j.get("finished")]
    if args.json:
        print(json.dumps({"jobs": jobs}, indent=2))
    elif not jobs:
        print("no jobs")
    else:
        print(format_table(jobs))
    return 0
