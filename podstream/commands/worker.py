"""`podstream worker`: the RunPod worker, exactly as `python -m worker` (see worker/cli.py).

Without the worker extra the job's first import of torch (or the runpod SDK) fails, and `podstream.cli`
says which extra to install."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser) -> None:
    from worker import cli

    cli.configure(parser)


def run(args: argparse.Namespace) -> int:
    from worker import cli

    return cli.run(args)
