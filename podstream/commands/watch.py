"""`podstream watch`: subscribe to a job on a relay (live, late join or replay) and save its files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import podstream.watcher as watch_mod
from podstream.cli import CommandError, UsageError
from podstream.progress import JobOutcome, TransferError, consume, outcome_dict, terminal_observer
from podstream.puller import RetryPolicy

DEFAULT_RELAY = "http://127.0.0.1:8700"

EPILOG = """\
Any number of watchers can follow one job; a finished job replays from the relay's disk.
If the connection drops, the watch resumes from the last record it applied; if you stop it, it
prints the --from value that resumes it later.
Examples:
  podstream watch 1a2b3c-u1 --relay http://127.0.0.1:8700 --out results/
  podstream watch 1a2b3c-u1 --relay https://relay.example.com --token $TOKEN --out results/ --from 42
Exit status: 0 when the job completed and every file arrived whole, 1 otherwise (the summary says why).
"""


def add_relay_arguments(parser: argparse.ArgumentParser) -> None:
    """--relay, --key and --token, shared with `podstream submit`."""
    parser.add_argument(
        "--relay",
        metavar="URL",
        default=os.environ.get("PODSTREAM_RELAY", DEFAULT_RELAY),
        help=f"the relay's URL (env PODSTREAM_RELAY, default {DEFAULT_RELAY})",
    )
    parser.add_argument(
        "--key",
        metavar="KEY",
        default=os.environ.get("PODSTREAM_API_KEY"),
        help="relay API key (env PODSTREAM_API_KEY)",
    )
    parser.add_argument(
        "--token",
        metavar="TOKEN",
        default=os.environ.get("PODSTREAM_TOKEN"),
        help="subscriber token for the job (env PODSTREAM_TOKEN); with only --key one is requested",
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("job", help="job id")
    add_relay_arguments(parser)
    parser.add_argument(
        "--out", metavar="DIR", type=Path, required=True, help="directory to save the files in"
    )
    parser.add_argument(
        "--from",
        dest="from_seq",
        metavar="SEQ",
        type=int,
        default=0,
        help="resume after this seq (the last one applied; default 0: from the start)",
    )
    parser.add_argument(
        "--retries", metavar="N", type=int, default=12, help="failed reconnects in a row before giving up"
    )
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON on stdout")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="a line for each item that never came, not one range"
    )


def check_relay(relay: str) -> None:
    try:
        watch_mod.ws_url(relay)
    except ValueError as exc:
        raise UsageError(f"{exc} (--relay)") from None


def watch_job(
    job: str,
    args: argparse.Namespace,
    out: Path,
    *,
    token: str | None,
    total: int | None = None,
    from_seq: int = 0,
) -> JobOutcome:
    """Watch `job` with progress bars (unless --quiet); print the resume hint when interrupted."""
    observer = terminal_observer(quiet=args.quiet, total=total, title=f"job {job}", verbose=args.verbose)
    observer.last_seq = from_seq
    files = watch_mod.watch(
        job,
        relay=args.relay,
        out=out,
        from_seq=from_seq,
        token=token,
        key=args.key,
        observer=observer,
        retry=RetryPolicy(attempts=args.retries),
        check=False,
    )
    try:
        return consume(files, observer)
    except KeyboardInterrupt:
        hint = resume_command(job, args.relay, out, observer.last_seq, key=args.key, token=token)
        print(f"interrupted; resume with: {hint}", file=sys.stderr)
        raise
    except TransferError as exc:
        raise CommandError(
            f"{exc} (resume with --from {observer.last_seq})" if observer.last_seq else str(exc)
        ) from None


def resume_command(job: str, relay: str, out: Path, seq: int, *, key: str | None, token: str | None) -> str:
    """The `podstream watch` line that carries on from `seq`. Credentials are named by their variable,
    never printed: a terminal's scrollback and a CI log are no place for a key."""
    return with_credentials(f"podstream watch {job} --relay {relay} --out {out} --from {seq}", key, token)


def with_credentials(command: str, key: str | None, token: str | None = None) -> str:
    """`command` with the credential it needs named by its variable (`--key "$PODSTREAM_API_KEY"`, else
    `--token "$PODSTREAM_TOKEN"`), never its value; when the variable does not hold the one used here, a
    note says what to set it to."""
    if key:
        flag, variable, value, what = "--key", "PODSTREAM_API_KEY", key, "the relay API key"
    elif token:
        flag, variable, value, what = "--token", "PODSTREAM_TOKEN", token, "the job's token"
    else:
        return command
    command += f' {flag} "${variable}"'
    if os.environ.get(variable) != value:
        command += f"  (with {variable} set to {what} used here)"
    return command


def report(outcome: JobOutcome, as_json: bool) -> int:
    if as_json:
        print(json.dumps(outcome_dict(outcome), indent=2))
    if not outcome.ok:
        raise CommandError(outcome.summary())
    if not as_json:
        print(outcome.summary())
    return 0


def run(args: argparse.Namespace) -> int:
    check_relay(args.relay)
    if args.from_seq < 0:
        raise UsageError("--from must be >= 0")
    if args.retries < 1:
        raise UsageError("--retries must be at least 1")
    try:
        outcome = watch_job(args.job, args, args.out, token=args.token, from_seq=args.from_seq)
    except TransferError as exc:
        raise CommandError(str(exc)) from None
    return report(outcome, args.json)
