"""The `podstream` command line.

Each subcommand lives in its own module under `podstream.commands` and exposes two functions:
`configure(parser: argparse.ArgumentParser) -> None` and `run(args: argparse.Namespace) -> int`.
Modules are imported only when their command runs, so `podstream --help` stays fast and a command's
heavy dependencies (torch for `worker`) are never loaded for another.

User mistakes end with one clear line on stderr and a non-zero exit, never a traceback: commands raise
`UsageError` (exit 2) or `CommandError` (exit 1) for those.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Protocol, cast

# name -> (module, one-line help). The order is the order `--help` lists them in.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("podstream.commands.demo", "run the whole system on this machine and stream a sample batch"),
    "submit": ("podstream.commands.submit", "submit a job through a relay and save its files"),
    "watch": (
        "podstream.commands.watch",
        "subscribe to a job on a relay (live or replay) and save its files",
    ),
    "pull": ("podstream.commands.pull", "poll RunPod's /stream directly (no relay) and save the job's files"),
    "jobs": ("podstream.commands.jobs", "list the jobs a relay knows, newest first"),
    "cancel": ("podstream.commands.cancel", "cancel a job on RunPod (through a relay, or directly)"),
    "relay": ("podstream.commands.relay", "run the relay (poller, journal, websocket fan-out)"),
    "emulator": ("podstream.commands.emulator", "run the local RunPod job-API emulator"),
    "worker": ("podstream.commands.worker", "run the RunPod worker (python -m worker)"),
    "prefetch": ("podstream.commands.prefetch", "download a model into a network volume's HF cache once"),
    "schema": ("podstream.commands.schema", "print the JSON Schema of the job input a worker takes"),
}


class UsageError(Exception):
    """The user asked for something that cannot be done as asked (exit status 2)."""


class CommandError(Exception):
    """The command could not finish: unreachable server, wrong key, ... (exit status 1)."""


class _Command(Protocol):
    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _load(name: str) -> _Command | None:
    module_name, _ = COMMANDS[name]
    try:
        return cast(_Command, importlib.import_module(module_name))
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None  # not built yet in this checkout
        raise


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="podstream",
        description="Stream large GPU outputs from RunPod serverless workers, live, without payload caps.",
    )
    parser.add_argument("--version", action="version", version=f"podstream {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        cmd_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == only:
            command = _load(name)
            if command is not None:
                command.configure(cmd_parser)
    return parser


def _version() -> str:
    from podstream import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in COMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    command = _load(args.command)
    if command is None:
        print(f"podstream: the '{args.command}' command is not available in this build", file=sys.stderr)
        return 2
    try:
        return command.run(args)
    except UsageError as exc:
        print(f"podstream {args.command}: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"podstream {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"podstream {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
