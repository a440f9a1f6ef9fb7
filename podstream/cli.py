"""The `podstream` command line.

Each subcommand lives in its own module under `podstream.commands` and exposes two functions:
`configure(parser: argparse.ArgumentParser) -> None` and `run(args: argparse.Namespace) -> int`.
Modules are imported only when their command runs, so `podstream --help` stays fast and a command's
heavy dependencies (torch for `worker`) are never loaded for another.

User mistakes end with one clear line on stderr and a non-zero exit, never a traceback: commands raise
`UsageError` (exit 2) or `CommandError` (exit 1) for those. A command that needs an extra the install lacks
(`pip install podstream` has no server dependencies) says which one to install, with exit 1.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
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

#: The import names of each extra's requirements in pyproject.toml (tests/test_packaging.py keeps
#: them equal): a command that meets one of them missing names the extra to install.
EXTRA_MODULES: dict[str, frozenset[str]] = {
    "worker": frozenset({"runpod", "torch", "diffusers", "transformers", "accelerate", "av", "PIL", "numpy"})
    | {"botocore", "huggingface_hub", "cpuinfo"},
    "relay": frozenset({"starlette", "uvicorn", "prometheus_client", "jwt", "pydantic_settings"}),
    "cluster": frozenset({"redis", "boto3"}),
    "emulator": frozenset({"starlette", "uvicorn"}),
}
#: The extras a command needs besides the core dependencies, checked before it runs (the others need
#: none; `relay --redis-url` meets the cluster extra missing when it imports it).
COMMAND_EXTRAS: dict[str, tuple[str, ...]] = {
    "demo": ("worker", "relay"),  # the relay extra brings the emulator's too
    "relay": ("relay",),
    "emulator": ("emulator",),
    "worker": ("worker",),
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


def missing_extra(command: str | None, exc: ModuleNotFoundError) -> str | None:
    """The line saying which extra to install, when `exc` is a module an extra brings; else None.

    The command's own extras when the module is one of theirs (all of them, so that one install does),
    else the extras that bring it (`relay --redis-url` without the cluster extra)."""
    module = (exc.name or "").partition(".")[0]
    own = COMMAND_EXTRAS.get(command or "", ())
    if any(module in EXTRA_MODULES[extra] for extra in own):
        extras = list(own)
    else:
        extras = [extra for extra, modules in EXTRA_MODULES.items() if module in modules][:1]
    if not extras:
        return None
    names = " and ".join(extras)
    return (
        f"needs the {names} extra{'s' if len(extras) > 1 else ''}: "
        f"pip install 'podstream[{','.join(extras)}]' (no module named {module!r})"
    )


def check_extras(command: str) -> None:
    """`ModuleNotFoundError` for the first module of the command's extras that is not installed (looked
    up, not imported), before the command starts anything."""
    for extra in COMMAND_EXTRAS.get(command, ()):
        for module in sorted(EXTRA_MODULES[extra]):
            if module not in sys.modules and importlib.util.find_spec(module) is None:
                raise ModuleNotFoundError(f"No module named {module!r}", name=module)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    chosen = first if first in COMMANDS else None
    try:
        return _main(argv, chosen)
    except ModuleNotFoundError as exc:  # an extra this install lacks: one line, not a traceback
        line = missing_extra(chosen, exc)
        if line is None:
            raise
        print(f"podstream {chosen}: {line}" if chosen else f"podstream: {line}", file=sys.stderr)
        return 1


def _main(argv: list[str], chosen: str | None) -> int:
    parser = build_parser(chosen)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    command = _load(args.command)
    if command is None:
        print(f"podstream: the '{args.command}' command is not available in this build", file=sys.stderr)
        return 2
    check_extras(args.command)
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
