"""`podstream emulator`: run the local RunPod job-API emulator, optionally with supervised workers.

    podstream emulator --port 8000 --endpoint-id local --api-key secret --workers 2 --worker-cmd "python -m worker"

Prints the endpoint URL and the environment a hand-started worker needs, then serves until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import sys
from typing import TYPE_CHECKING

from podstream.cli import CommandError, UsageError

if TYPE_CHECKING:
    from podstream.emulator import Emulator


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one")
    parser.add_argument(
        "--endpoint-id", default="local", help="the endpoint id in /v2/{id}/... (default: local)"
    )
    parser.add_argument(
        "--api-key", default=None, help="key clients must send (Authorization); none: no check"
    )
    parser.add_argument("--worker-api-key", default=None, help="key workers must send (default: --api-key)")
    parser.add_argument("--workers", type=int, default=0, help="number of worker processes to run")
    parser.add_argument(
        "--worker-cmd", default=None, help='command that starts one worker, e.g. "python -m worker"'
    )
    parser.add_argument(
        "--worker-log-dir", default=None, help="write each worker's output to DIR/<pod-id>.log"
    )
    parser.add_argument("--no-restart", action="store_true", help="do not replace workers that exit")
    parser.add_argument(
        "--max-failed-starts",
        type=int,
        default=None,
        metavar="N",
        help="workers exiting within 30 s of starting N times in a row are given up on, and the "
        "emulator exits with their last log lines (default: 5; restarts back off meanwhile)",
    )
    parser.add_argument(
        "--max-stream-item-bytes", type=int, default=None, help="job-stream body cap (default: 1 MB)"
    )
    parser.add_argument("--max-run-bytes", type=int, default=None, help="/run body cap (default: 10 MB)")
    parser.add_argument(
        "--retention",
        type=float,
        default=None,
        help="seconds /run results are kept after the end (default: 1800)",
    )
    parser.add_argument(
        "--execution-timeout-ms",
        type=int,
        default=None,
        help="default job execution timeout (default: 600000)",
    )
    parser.add_argument(
        "--ping-interval-ms", type=int, default=None, help="worker heartbeat interval (default: 10000)"
    )
    parser.add_argument(
        "--heartbeat-grace",
        type=float,
        default=None,
        help="seconds without a ping before a job fails (default: 60)",
    )
    parser.add_argument(
        "--print-env", action="store_true", help="print the worker environment as shell exports"
    )


def run(args: argparse.Namespace) -> int:
    from podstream.emulator import Emulator, EmulatorConfig

    if args.workers < 0:
        raise UsageError("--workers must not be negative")
    if args.workers and not args.worker_cmd:
        raise UsageError("--workers needs --worker-cmd")
    if not 0 <= args.port <= 65535:
        raise UsageError("--port must be between 0 and 65535")
    changes: dict[str, object] = {}
    for flag, field in (
        ("max_stream_item_bytes", "max_stream_item_bytes"),
        ("max_run_bytes", "max_run_bytes"),
        ("retention", "retention_run_s"),
        ("execution_timeout_ms", "execution_timeout_ms"),
        ("ping_interval_ms", "ping_interval_ms"),
        ("heartbeat_grace", "heartbeat_grace_s"),
        ("max_failed_starts", "worker_max_failed_starts"),
    ):
        value = getattr(args, flag)
        if value is not None:
            changes[field] = value
    try:
        config = EmulatorConfig(
            endpoint_id=args.endpoint_id, api_key=args.api_key, worker_api_key=args.worker_api_key
        ).with_changes(**changes)
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None
    return asyncio.run(_serve(Emulator(config), args))


async def _serve(emulator: Emulator, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def on_signal(sig: int) -> None:
        received.append(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)

    # A worker command that cannot start is given up on (after backing off): stop, and say why.
    def given_up(failure: object) -> None:
        loop.call_soon_threadsafe(stop.set)

    emulator.on_worker_failure = given_up
    try:
        async with emulator.serve(args.host, args.port) as emu:
            print(f"podstream emulator: {emu.endpoint_url}", flush=True)
            if args.print_env:
                for name, value in emu.worker_env("local-worker").items():
                    print(f"export {name}={shlex.quote(value)}", flush=True)
            if args.workers:
                started = emu.spawn_workers(
                    args.workers,
                    args.worker_cmd,
                    log_dir=args.worker_log_dir,
                    restart=not args.no_restart,
                )
                names = ", ".join(f"{w.pod_id} (pid {w.pid})" for w in started)
                print(f"podstream emulator: started {names}", flush=True)
            await stop.wait()
            failures = emu.worker_failures
    except OSError as exc:
        raise CommandError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
    if failures:
        failure = failures[0]
        if failure.log_tail:
            print(f"podstream emulator: last lines of {failure.log_path}:", file=sys.stderr)
            for line in failure.log_tail:
                print(f"  | {line}", file=sys.stderr)
        elif failure.log_path is None:
            print(
                "podstream emulator: the worker's output is above (--worker-log-dir keeps it)",
                file=sys.stderr,
            )
        raise CommandError(failure.message)
    if signal.SIGINT in received:  # Ctrl-C: stopped cleanly above; exit 130, as every command (SIGTERM: 0)
        raise KeyboardInterrupt
    return 0
