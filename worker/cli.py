"""`python -m worker` and `podstream worker`: run the worker on RunPod, or one job locally with `--once`.

    python -m worker                                  # on RunPod (or against `podstream emulator`)
    python -m worker --once job.json --out results/   # one job here; files + manifest.json in results/
    PODSTREAM_MODEL=svd PODSTREAM_MODEL_PATH=/runpod-volume/models/svd python -m worker

The model loads once, before the worker takes its first job. Exit status with `--once`: 0 when every item
was produced, 1 when some failed (their errors are printed), 2 for a malformed job or bad arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from podstream.cli import CommandError, UsageError


def configure(parser: argparse.ArgumentParser) -> None:
    from worker.pipelines import FAMILIES

    parser.add_argument(
        "--model",
        choices=sorted(FAMILIES),
        default=os.environ.get("PODSTREAM_MODEL") or "tiny",
        help="model family (env PODSTREAM_MODEL; default: tiny, random weights built in code)",
    )
    parser.add_argument(
        "--model-path",
        default=os.environ.get("PODSTREAM_MODEL_PATH") or None,
        help="directory or Hugging Face repo id (from the local HF cache, offline) of the weights (env PODSTREAM_MODEL_PATH)",
    )
    parser.add_argument(
        "--once", metavar="INPUT.json", help="run one job from this file ('-': stdin) here, then exit"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("podstream-out"),
        help="where --once writes files (default: podstream-out)",
    )
    parser.add_argument("--job-id", default="local", help="job id used by --once (default: local)")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("PODSTREAM_LOG_LEVEL", "INFO"),
        help="worker log level (default INFO)",
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    from podstream.jobspec import JobInputError, Limits
    from worker import start
    from worker.pipelines import UnknownModel, load_model
    from worker.pipelines.diffusion import ModelNotFound

    try:
        Limits.from_env()  # read again by the handler: a bad value stops the start, before the model loads
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    job_input = None
    if args.once is not None:
        try:
            job_input = start.read_job_input(args.once)
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read the job input {args.once}: {exc}") from None
    elif not os.environ.get("RUNPOD_WEBHOOK_GET_JOB"):
        raise UsageError(
            "RUNPOD_WEBHOOK_GET_JOB is not set, so this is not a RunPod worker: use --once INPUT.json to run one "
            "job locally, or run it against `podstream emulator`"
        )
    try:
        model = load_model(args.model, args.model_path)
    except (UnknownModel, ModelNotFound) as exc:
        raise CommandError(str(exc)) from None
    if job_input is None:
        start.serve(model)
        return 0
    try:
        report = start.run_once(model, job_input, args.out, job_id=args.job_id)
    except JobInputError as exc:
        raise UsageError(f"invalid job input: {exc}") from None
    for item, path in sorted(report.files.items()):
        print(f"item {item}: {path}")
    for item, error in sorted(report.errors.items()):
        print(f"item {item}: FAILED {error}")
    for problem in report.problems:
        print(f"stream problem: {problem}")
    print(f"{len(report.files)} file(s), {len(report.errors)} error(s) in {args.out}")
    return 0 if report.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker", description="the podstream RunPod worker")
    configure(parser)
    args, _ = parser.parse_known_args(argv)  # the runpod SDK reads its own --rp_* flags from sys.argv
    try:
        return run(args)
    except UsageError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"worker: {exc}", file=sys.stderr)
        return 1
