"""`podstream demo`: the whole system on this machine (emulator + tiny CPU workers + relay) and a sample batch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from podstream.cli import CommandError, UsageError
from podstream.progress import cli_console

EPILOG = """\
Everything runs on loopback as child processes; nothing is downloaded (the `tiny` pipelines are built in
code with random weights, so the videos show noise shaped by the sample images, not art). Files are saved
to OUT/<job id>/, logs to OUT/logs/. It prints a short link to the demo page (the job's id and a one-time
code, never the API key; the key is in OUT/api-key). When stdin is a terminal the stack then keeps running
until Ctrl-C, so the link can be opened; otherwise (CI, a pipe) it ends after the summary. Ctrl-C stops every
process.
"""


def configure(parser: argparse.ArgumentParser) -> None:
    from podstream.demo import DemoSettings

    defaults = DemoSettings()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "--out",
        metavar="DIR",
        type=Path,
        default=defaults.out,
        help=f"where files go (default ./{defaults.out})",
    )
    parser.add_argument(
        "--videos",
        type=int,
        default=defaults.videos,
        help=f"image -> video items (default {defaults.videos})",
    )
    parser.add_argument(
        "--images", type=int, default=defaults.images, help=f"text -> image items (default {defaults.images})"
    )
    parser.add_argument(
        "--workers", type=int, default=defaults.workers, help=f"worker processes (default {defaults.workers})"
    )
    parser.add_argument(
        "--frames", type=int, default=defaults.frames, help=f"frames per video ({defaults.frames})"
    )
    parser.add_argument(
        "--size", type=int, default=defaults.size, help=f"width and height of every output ({defaults.size})"
    )
    parser.add_argument(
        "--steps", type=int, default=defaults.steps, help=f"denoising steps ({defaults.steps})"
    )
    parser.add_argument(
        "--keep-running",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the stack up after the batch (for the browser demo page) until Ctrl-C "
        "(default: when stdin is a terminal)",
    )
    parser.add_argument(
        "--worker-cmd", metavar="CMD", help="command that starts one worker (default: python -m worker)"
    )
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON on stdout")


def run(args: argparse.Namespace) -> int:
    from podstream.demo import DemoError, DemoSettings, run_demo, sigterm_as_interrupt, summary_json

    for name in ("workers", "frames", "size", "steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    if args.videos < 0 or args.images < 0 or args.videos + args.images == 0:
        raise UsageError("--videos and --images must be >= 0, and not both 0")
    if args.size % 8:
        raise UsageError("--size must be a multiple of 8")
    settings = DemoSettings(
        out=args.out,
        workers=args.workers,
        videos=args.videos,
        images=args.images,
        frames=args.frames,
        size=args.size,
        steps=args.steps,
        keep_running=(sys.stdin is not None and sys.stdin.isatty())
        if args.keep_running is None
        else args.keep_running,
        **({"worker_cmd": args.worker_cmd} if args.worker_cmd else {}),
    )
    console = cli_console(stderr=args.json)
    try:
        with sigterm_as_interrupt():
            summary = run_demo(settings, console)
    except DemoError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        print(summary_json(summary))
    if summary.interrupted:  # Ctrl-C ended the kept-running stack: 130, as for every command stopped so
        raise KeyboardInterrupt
    return 0 if summary.ok else 1
