"""`podstream relay`: run the relay (single poller per job, journal on disk, websocket fan-out)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from podstream.cli import UsageError

EPILOG = """\
Every option can also come from the environment as PODSTREAM_<NAME> (PODSTREAM_RUNPOD_URL,
PODSTREAM_RUNPOD_KEY, PODSTREAM_DATA_DIR, PODSTREAM_POLL_WAIT_MS, ...); options win. See docs/relay.md.
Examples:
  PODSTREAM_RUNPOD_KEY=... podstream relay --runpod-url https://api.runpod.ai/v2/ENDPOINT_ID --data-dir /var/lib/podstream
  podstream relay --runpod-url http://127.0.0.1:8800/v2/local --port 8700
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "--runpod-url", metavar="URL", help="RunPod endpoint base URL (https://api.runpod.ai/v2/ID)"
    )
    parser.add_argument(
        "--runpod-key", metavar="KEY", help="RunPod API key (better: env PODSTREAM_RUNPOD_KEY)"
    )
    parser.add_argument(
        "--data-dir", metavar="DIR", type=Path, help="journals and media (default ./podstream-data)"
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8700)")
    parser.add_argument(
        "--public-url", metavar="URL", help="the relay's public base URL, for the URLs it returns"
    )
    parser.add_argument("--poll-wait-ms", type=int, help="RunPod /stream long-poll wait (default 10000)")
    parser.add_argument(
        "--fsync", choices=("always", "never"), help="durability of journal and media (default always)"
    )
    parser.add_argument("--retention-s", type=float, help="delete finished jobs after this long (0 = never)")
    parser.add_argument("--send-timeout-s", type=float, help="a websocket send slower than this: bye 4001")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def settings_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Any:
    from relay.config import ConfigError, RelaySettings

    names = (
        "runpod_url", "runpod_key", "data_dir", "host", "port", "public_url", "poll_wait_ms", "fsync",
        "retention_s", "send_timeout_s",
    )  # fmt: skip
    try:
        return RelaySettings.from_env(environ, **{name: getattr(args, name, None) for name in names})
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    from relay.serve import serve

    settings = settings_from(args)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not settings.runpod_url:
        logging.getLogger("podstream.relay").warning(
            "no RunPod URL (--runpod-url / PODSTREAM_RUNPOD_URL): serving stored jobs only"
        )
    try:
        serve(settings, log_level=args.log_level)
    except OSError as exc:
        raise UsageError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from None
    return 0
