"""`podstream pull`: drain a job's RunPod `/stream` directly (no relay) and save its files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import podstream.puller as pull_mod
import podstream.submit as submit_mod
from podstream.cli import CommandError, UsageError
from podstream.progress import JobOutcome, Observer, TransferError, consume, outcome_dict, terminal_observer

EPILOG = """\
RunPod's /stream hands each item out once: run one puller per job (this, or a relay, never both).
With --submit the images travel inside the job, under RunPod's 10 MB /run cap; a relay takes any
number (podstream submit --relay URL uploads them and submits references).
Examples:
  podstream pull 1a2b3c-u1 --endpoint abc123 --key $RUNPOD_API_KEY --out results/
  podstream pull --submit job.json --runpod-url http://127.0.0.1:8001/v2/local --out results/
Exit status: 0 when the job completed and every file arrived whole, 1 otherwise (the summary says why).
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("job", nargs="?", help="RunPod job id (omit with --submit)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--runpod-url",
        metavar="URL",
        default=os.environ.get("RUNPOD_ENDPOINT_URL"),
        help="the endpoint's URL, https://api.runpod.ai/v2/ENDPOINT_ID (env RUNPOD_ENDPOINT_URL)",
    )
    where.add_argument("--endpoint", metavar="ID", help="the endpoint id (URL on api.runpod.ai)")
    parser.add_argument(
        "--key",
        metavar="KEY",
        default=os.environ.get("RUNPOD_API_KEY"),
        help="RunPod API key (env RUNPOD_API_KEY)",
    )
    parser.add_argument(
        "--out", metavar="DIR", type=Path, required=True, help="directory to save the files in"
    )
    parser.add_argument(
        "--submit",
        metavar="FILE",
        type=Path,
        help="submit this job input (JSON) with POST /run first, then pull it",
    )
    parser.add_argument(
        "--wait",
        metavar="MS",
        type=int,
        default=pull_mod.DEFAULT_WAIT_MS,
        help="long-poll wait per request (ms)",
    )
    parser.add_argument(
        "--retries",
        metavar="N",
        type=int,
        default=8,
        help="failed requests in a row before giving up (default 8)",
    )
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="a line for each item that never came, not one range"
    )


def load_input(path: Path) -> dict[str, Any]:
    """A job input from a JSON file holding either `{"input": {...}}` or the input itself."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("input"), dict):
        data = data["input"]
    if not isinstance(data, dict):
        raise UsageError(f"{path} must hold a JSON object (the job input)")
    return data


def direct_input(path: Path) -> dict[str, Any]:
    """A job input from `path` to send straight to RunPod's `/run`: under its 10 MB cap, and without
    relay input refs (`input:<sha256>`), which only a relay resolves."""
    data = load_input(path)
    items = data.get("items")
    for k, item in enumerate(items if isinstance(items, list) else []):
        image = item.get("image") if isinstance(item, dict) else None
        if isinstance(image, str) and image.startswith("input:"):
            raise UsageError(
                f"items[{k}].image is a relay input ({image[:20]}...): only a relay resolves those; "
                "submit through it (podstream submit --relay URL)"
            )
    try:
        submit_mod.check_size(data)
    except submit_mod.InputError as exc:
        raise UsageError(str(exc)) from None
    return data


def run(args: argparse.Namespace) -> int:
    if (args.job is None) == (args.submit is None):
        raise UsageError("give a JOB id or --submit FILE (one of them)")
    if args.retries < 1:
        raise UsageError("--retries must be at least 1")
    try:
        base = pull_mod.endpoint_url(args.runpod_url, args.endpoint)
    except ValueError as exc:
        raise UsageError(f"{exc} (--runpod-url or --endpoint)") from None
    retry = pull_mod.RetryPolicy(attempts=args.retries)
    try:
        job = args.job
        if args.submit is not None:
            job = pull_mod.run_job(direct_input(args.submit), runpod_url=base, key=args.key, retry=retry)
            # Status lines go to stderr, so that stdout holds only the outcome (JSON with --json).
            print(f"submitted job {job}", file=sys.stderr, flush=True)
        observer = terminal_observer(quiet=args.quiet, title=f"job {job}", verbose=args.verbose)
        out = args.out / job if args.submit is not None else args.out
        outcome = _pull(job, base, args, retry, out, observer)
    except TransferError as exc:
        raise CommandError(str(exc)) from None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(outcome_dict(outcome), indent=2))
    if not outcome.ok:
        raise CommandError(outcome.summary())
    if not args.json:
        print(outcome.summary())
    return 0


def _pull(
    job: str, base: str, args: argparse.Namespace, retry: pull_mod.RetryPolicy, out: Path, observer: Observer
) -> JobOutcome:
    files = pull_mod.pull(
        job,
        runpod_url=base,
        key=args.key,
        out=out,
        wait_ms=args.wait,
        retry=retry,
        observer=observer,
        check=False,
    )
    return consume(files, observer)
