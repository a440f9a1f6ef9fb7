"""`podstream relay`: run the relay (single poller per job, journal on disk, websocket fan-out).

Auth is on by default: the relay refuses to start without an API key configured (as its hash) unless
`--insecure` is given, which is for local development only and says so loudly. `--generate-key` prints a
new key and the entry to configure the relay with.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

from podstream.cli import CommandError, UsageError

EPILOG = """\
Every option can also come from the environment as PODSTREAM_<NAME> (PODSTREAM_RUNPOD_URL,
PODSTREAM_RUNPOD_KEY, PODSTREAM_API_KEYS, PODSTREAM_DATA_DIR, PODSTREAM_POLL_WAIT_MS, ...); options win.
See docs/relay.md ("Security" for keys, tokens and origins).
Examples:
  podstream relay --generate-key            # prints a key for clients and the hash to configure
  PODSTREAM_API_KEYS=sha256:... PODSTREAM_RUNPOD_KEY=... podstream relay --runpod-url https://api.runpod.ai/v2/ENDPOINT_ID
  podstream relay --insecure --runpod-url http://127.0.0.1:8800/v2/local   # local development only
"""

INSECURE_WARNING = (
    "*** INSECURE MODE: no authentication. Anyone who can reach {where} can submit, cancel and read "
    "every job. For local development only. ***"
)


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
    parser.add_argument(
        "--disk-quota-bytes", type=int, help="bytes the data directory may hold (0 = no quota)"
    )
    parser.add_argument(
        "--input-schema", metavar="FILE|builtin|off",
        help="JSON Schema POST /v1/jobs checks inputs against: a file (`podstream schema` of a worker with "
        "its own model), builtin (default: the built-in worker's) or off (e.g. a handler wrapped with "
        "podstream.wrap)",
    )  # fmt: skip
    security = parser.add_argument_group("security")
    security.add_argument(
        "--api-keys", metavar="ENTRIES",
        help="API key hashes, [name=]sha256:HEX[/scope+scope], comma separated (better: env PODSTREAM_API_KEYS)",
    )  # fmt: skip
    security.add_argument("--api-keys-file", metavar="FILE", help="a file of API key entries, one per line")
    security.add_argument(
        "--allowed-origins",
        metavar="ORIGINS",
        help="websocket Origins allowed besides the relay's own (* = any)",
    )
    security.add_argument(
        "--cors-origins", metavar="ORIGINS", help="Origins allowed to call the HTTP API from browsers"
    )
    security.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="no authentication at all (local development only)",
    )
    security.add_argument(
        "--generate-key", action="store_true",
        help="print a new API key and the entry to configure the relay with, then exit",
    )  # fmt: skip
    security.add_argument(
        "--scopes", default=None, help="with --generate-key: the key's scopes, e.g. jobs:read (default: all)"
    )
    cluster = parser.add_argument_group(
        "cluster mode (docs/deploy.md: both URLs, the same PODSTREAM_TOKEN_SECRET)"
    )
    cluster.add_argument(
        "--redis-url", metavar="URL", help="redis://HOST:PORT/DB: journals, leases, job index"
    )
    cluster.add_argument("--media-url", metavar="URL", help="s3://BUCKET/PREFIX: media files")
    cluster.add_argument("--s3-endpoint-url", metavar="URL", help="S3 API endpoint (MinIO, R2); default AWS")
    cluster.add_argument("--replica-id", metavar="NAME", help="this replica's name (default hostname-pid)")
    cluster.add_argument(
        "--media-redirect", action="store_true", default=None,
        help="answer media downloads with 302 to a presigned bucket URL (the relay carries no media bytes)",
    )  # fmt: skip
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="json: one object per line (with job ids)",
    )


def settings_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Any:
    from relay.config import ConfigError, RelaySettings

    names = (
        "runpod_url", "runpod_key", "data_dir", "host", "port", "public_url", "poll_wait_ms", "fsync",
        "retention_s", "send_timeout_s", "disk_quota_bytes", "api_keys", "api_keys_file", "allowed_origins",
        "cors_origins", "insecure", "log_format", "input_schema", "media_redirect",
    )  # fmt: skip
    try:
        return RelaySettings.from_env(environ, **{name: getattr(args, name, None) for name in names})
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def generate(scopes: str | None) -> str:
    """A new key and how to configure it (the key itself is shown once, never stored by the relay)."""
    from relay.api.auth import SCOPES, generate_key, hash_key

    chosen = sorted(SCOPES) if scopes is None else [s for s in scopes.replace(",", "+").split("+") if s]
    unknown = set(chosen) - SCOPES
    if unknown or not chosen:
        raise UsageError(f"--scopes must be some of {'+'.join(sorted(SCOPES))}")
    key = generate_key()
    entry = hash_key(key) + ("" if scopes is None else "/" + "+".join(chosen))
    return (
        f"key:   {key}\n"
        f"entry: {entry}\n"
        f"scopes: {' '.join(chosen)}\n\n"
        "Give the key to clients (podstream submit/watch --key, or PODSTREAM_API_KEY) and configure the relay\n"
        f"with the entry: PODSTREAM_API_KEYS={entry}  (comma-separate several). Keep the key secret; the relay\n"
        "stores only its hash.\n"
    )


def cluster_settings(args: argparse.Namespace, settings: Any) -> Any:
    """The cluster-mode settings (both URLs, or neither), checked against the rest: else exit 2."""
    from relay.config import ConfigError
    from relay.storage.cluster.settings import ClusterSettings

    try:
        names = ("redis_url", "media_url", "s3_endpoint_url", "replica_id")
        cluster = ClusterSettings.from_env(None, **{name: getattr(args, name, None) for name in names})
        cluster.check(settings)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    return cluster


def start_cluster(cluster: Any) -> None:
    """Cluster mode: Redis and the bucket probed before serving (exit 1 when one cannot be used)."""
    # Without the cluster extra this is ModuleNotFoundError: podstream.cli names the extra to install.
    from relay.storage.cluster.cluster import ClusterUnavailable, start_check

    try:
        logging.getLogger("podstream.relay").info("cluster mode: %s", start_check(cluster))
    except ClusterUnavailable as exc:
        raise CommandError(str(exc)) from None


def run(args: argparse.Namespace) -> int:
    if args.generate_key:
        print(generate(args.scopes), end="")
        return 0
    from relay.config import ConfigError
    from relay.logs import configure
    from relay.serve import serve
    from relay.service import authorizer_from

    settings = settings_from(args)
    cluster = cluster_settings(args, settings)
    configure(args.log_level, settings.log_format)
    log = logging.getLogger("podstream.relay")
    try:
        authorizer_from(settings)  # refuses to start without keys unless --insecure
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    if cluster.enabled:
        start_cluster(cluster)
    if settings.insecure:
        log.warning(INSECURE_WARNING.format(where=f"{settings.host}:{settings.port}"))
    if not settings.runpod_url:
        log.warning("no RunPod URL (--runpod-url / PODSTREAM_RUNPOD_URL): serving stored jobs only")
    try:
        serve(
            settings, cluster=cluster if cluster.enabled else None,
            log_level=args.log_level, log_config=None, access_log=False,
        )  # fmt: skip
    except ConfigError as exc:  # e.g. an input schema file that will not do
        raise UsageError(str(exc)) from None
    except OSError as exc:  # e.g. the port is in use: one line, exit 1
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise CommandError(f"cannot listen on {settings.host}:{settings.port}: {reason.lower()}") from None
    return 0
