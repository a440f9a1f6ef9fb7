"""The relay's settings: one frozen object, built once from the environment and the command line.

Every limit the relay enforces is a field here, with its default, so there is one place to read them.
Environment variables are `PODSTREAM_<FIELD>` in upper case (`PODSTREAM_RUNPOD_URL`, `PODSTREAM_DATA_DIR`,
`PODSTREAM_POLL_WAIT_MS`, ...); explicit overrides (the `podstream relay` flags) win over the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

ENV_PREFIX: Final = "PODSTREAM_"
FSYNC_POLICIES: Final = ("always", "never")


class ConfigError(ValueError):
    """A setting has a value the relay cannot run with (one line, names the variable)."""


@dataclass(frozen=True)
class RelaySettings:
    #: RunPod endpoint base URL, e.g. https://api.runpod.ai/v2/ENDPOINT_ID. Empty: replay only, no polling.
    runpod_url: str = ""
    runpod_key: str = field(default="", repr=False)
    data_dir: Path = Path("podstream-data")
    host: str = "127.0.0.1"
    port: int = 8700
    #: Public base URL of this relay (for the absolute URLs in responses); empty = taken from each request.
    public_url: str = ""

    # --- polling RunPod
    #: `?wait=` of each `/stream` long-poll, in ms (RunPod accepts 1000..300000).
    poll_wait_ms: int = 10_000
    #: Retries of one RunPod call on 429/5xx/timeouts before it fails (the poller then backs off and retries).
    retries: int = 5
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    #: Extra time on top of `poll_wait_ms` before a `/stream` request counts as timed out.
    read_timeout_s: float = 30.0
    #: At most this many jobs are polled at once; more attach requests get 503.
    max_pollers: int = 1000

    # --- store
    #: "always": the journal is fsynced after every poll response, before anything of it is published,
    #: and media files before they are renamed into place. "never": leave it to the OS (tests, benchmarks).
    fsync: Literal["always", "never"] = "always"
    #: Journal records kept in memory per open job (older ones are read back from disk).
    tail_records: int = 1024
    #: Finished jobs are deleted this long after they finished (0 = keep forever); a job may ask for its own
    #: (`retention_s` in `POST /v1/jobs`), up to `max_retention_s`.
    retention_s: float = 3600.0
    max_retention_s: float = 30 * 24 * 3600.0
    #: Bytes the data directory may hold (0 = no quota). Above it the oldest finished jobs are deleted first;
    #: an item that still does not fit fails with `quota_exceeded`.
    disk_quota_bytes: int = 0
    #: Largest accepted `POST /v1/jobs` body (RunPod's own `/run` cap is 10 MB).
    max_submit_bytes: int = 10_000_000
    #: The JSON Schema `POST /v1/jobs` checks inputs against (relay/input_schema.py): "builtin" (the built-in
    #: worker's), a file (a worker with its own input model), or "off".
    input_schema: str = "builtin"

    # --- websocket fan-out
    #: Bytes of an item per `chunk` frame (the protocol caps it at 256 KiB).
    chunk_bytes: int = 256 * 1024
    #: Encoded chunk frames shared between subscribers of the same bytes (bounded, least recently used out).
    chunk_cache_bytes: int = 32 * 1024 * 1024
    #: A send that does not complete within this many seconds makes the subscriber slow: bye 4001.
    send_timeout_s: float = 10.0
    ping_interval_s: float = 20.0
    #: No frame from the client (pong or other) for this long after a ping: bye 4002.
    ping_timeout_s: float = 20.0
    max_frame_bytes: int = 64 * 1024
    max_subscriptions: int = 64
    max_connections: int = 10_000
    #: Records per response of the long-poll JSON events API.
    max_events_per_response: int = 1000

    # --- security (docs/relay.md, "Security")
    #: No authentication at all (local development only; logged loudly).
    insecure: bool = False
    #: API keys as hashes: `[name=]sha256:<hex>[/scope+scope]`, comma or whitespace separated.
    api_keys: str = field(default="", repr=False)
    #: A file of such entries, one per line (e.g. a mounted secret).
    api_keys_file: str = ""
    #: HMAC secret of subscriber tokens and media URL signatures (>= 32 bytes). Empty: a random one is made
    #: and kept in `<data_dir>/token-secret` (set it explicitly to keep tokens valid across a new data directory).
    token_secret: str = field(default="", repr=False)
    token_audience: str = "podstream"
    token_ttl_s: float = 3600.0
    max_token_ttl_s: float = 24 * 3600.0
    media_url_ttl_s: float = 3600.0
    #: Websocket Origins allowed besides the relay's own (comma separated; `*` = any).
    allowed_origins: str = ""
    #: Origins allowed to call the HTTP API from a browser (CORS; comma separated; `*` = any; empty = none).
    cors_origins: str = ""
    #: Job submissions per API key per minute (then 429).
    submits_per_minute: int = 60
    #: A websocket that needs a token and sends no `auth` frame within this: bye 4501.
    auth_timeout_s: float = 5.0
    #: Websockets waiting for their `auth` frame, at most (their own budget, apart from `max_connections`):
    #: past it the one waiting longest is closed (4004), so a flood of them cannot lock real clients out.
    max_pending_auth: int = 1000

    # --- connections (relay.serve)
    #: A connection whose request headers are not complete within this is closed (idle or trickling).
    header_timeout_s: float = 5.0
    #: File descriptors kept free of client connections for journals, media and RunPod calls (0 = an eighth
    #: of RLIMIT_NOFILE, at least 64); connections past the rest are refused at once.
    fd_reserve: int = 0
    #: "text" or "json" (one JSON object per line, with the job id where there is one).
    log_format: Literal["text", "json"] = "text"

    # --- delivery and recovery (docs/relay.md, "Delivery and recovery")
    #: Largest accepted `PUT /v1/uploads/{job}/{item}` body (a worker's direct upload of one file).
    max_upload_bytes: int = 4 * 1024**3
    #: An upload that no item claimed (no `ref` came for it) is deleted this long after it arrived (at once
    #: once its job has ended), by the retention sweep.
    upload_grace_s: float = 3600.0
    #: Gap recovery: `resend` jobs submitted for a job whose stream ended with gaps (0 = report, never resend).
    recovery_attempts: int = 2
    #: How long one resend job may take (queued, run and drained) before the relay stops waiting for it.
    recovery_timeout_s: float = 300.0
    #: Tests only: SIGKILL the relay right after it drained its n-th non-empty `/stream` answer, before that
    #: answer is written (simulates a crash between draining and persisting). 0 = off.
    test_crash_after_drain: int = 0

    def __post_init__(self) -> None:
        if self.runpod_url and not self.runpod_url.startswith(("http://", "https://")):
            raise ConfigError(f"PODSTREAM_RUNPOD_URL must be an http(s) URL, got {self.runpod_url!r}")
        if self.fsync not in FSYNC_POLICIES:
            raise ConfigError(
                f"PODSTREAM_FSYNC must be one of {', '.join(FSYNC_POLICIES)}, got {self.fsync!r}"
            )
        if not 1000 <= self.poll_wait_ms <= 300_000:
            raise ConfigError("PODSTREAM_POLL_WAIT_MS must be between 1000 and 300000 (RunPod's range)")
        if not 1 <= self.chunk_bytes <= 256 * 1024:
            raise ConfigError("PODSTREAM_CHUNK_BYTES must be between 1 and 262144")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"PODSTREAM_PORT out of range: {self.port}")
        positive = (
            "backoff_initial_s", "backoff_max_s", "connect_timeout_s", "read_timeout_s", "send_timeout_s",
            "ping_interval_s", "ping_timeout_s", "max_frame_bytes", "max_subscriptions", "max_connections",
            "max_pollers", "tail_records", "max_submit_bytes", "max_events_per_response", "token_ttl_s",
            "max_token_ttl_s", "media_url_ttl_s", "submits_per_minute", "auth_timeout_s", "max_retention_s",
            "max_upload_bytes", "recovery_timeout_s", "max_pending_auth", "header_timeout_s", "upload_grace_s",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be positive")
        if (
            self.retries < 0
            or self.retention_s < 0
            or self.chunk_cache_bytes < 0
            or self.disk_quota_bytes < 0
        ):
            raise ConfigError(
                "PODSTREAM_RETRIES, PODSTREAM_RETENTION_S, PODSTREAM_CHUNK_CACHE_BYTES and "
                "PODSTREAM_DISK_QUOTA_BYTES must be >= 0"
            )
        if self.fd_reserve < 0:
            raise ConfigError("PODSTREAM_FD_RESERVE must be >= 0")
        if self.recovery_attempts < 0 or self.test_crash_after_drain < 0:
            raise ConfigError("PODSTREAM_RECOVERY_ATTEMPTS and PODSTREAM_TEST_CRASH_AFTER_DRAIN must be >= 0")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"PODSTREAM_LOG_FORMAT must be text or json, got {self.log_format!r}")

    @property
    def runpod_url_base(self) -> str:
        return self.runpod_url.rstrip("/")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RelaySettings:
        """Settings from `PODSTREAM_*` variables, then `overrides` (None values are ignored)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {sorted(unknown)}")
        if "data_dir" in values:
            values["data_dir"] = Path(values["data_dir"])
        return cls(**values)


def _parse(name: str, kind: Any, raw: str) -> Any:
    kind = str(kind)
    if kind == "bool":
        lowered = raw.strip().lower()
        if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be true or false, got {raw!r}")
        return lowered in ("1", "true", "yes", "on")
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"{ENV_PREFIX}{name.upper()} must be a number, got {raw!r}") from None
    if kind == "Path":
        return Path(raw)
    return raw
