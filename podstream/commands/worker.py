"""`podstream worker`: the RunPod worker, exactly as `python -m worker` (see worker/cli.py)."""

from __future__ import annotations

import argparse

from podstream.cli import UsageError


def configure(parser: argparse.ArgumentParser) -> None:
    try:
        from worker import cli
    except ImportError as exc:  # the worker extra is not installed
        parser.set_defaults(_missing=str(exc))
        return
    cli.configure(parser)


def run(args: argparse.Namespace) -> int:
    missing = getattr(args, "_missing", None)
    if missing is not None:
        raise UsageError(f"the worker is not installed ({missing}); pip install 'podstream[worker]'")
    from worker import cli

    return cli.run(args)
