"""The relay's settings: one frozen object, built once from the environment and the command line.

Every limit the relay enforces is a field here, with its default, so there is one place to read them.
Environment variables are `PODSTREAM_<FIELD>` in upper case (`PODSTREAM_RUNPOD_URL`, `PODSTREAM_DATA_DIR`,
`PODSTREAM_POLL_WAIT_MS`, ...); explicit overrides (the `podstream relay` flags) win over the environment.
pydantic-settings does the reading and the type checks; `from_env` turns its errors into one-line
`ConfigError`s that name the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BeforeValidator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX: Final = "PODSTREAM_"
FSYNC_POLICIES: Final = ("always", "never")
_TRUE: Final = ("1", "true", "yes", "on")
_FALSE: Final = ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A setting has a value the relay cannot run with (one line, names the variable)."""


def _parse_bool(value: object) -> object:
    # pydantic's own bool parsing also takes t/f/y/n; the relay has always accepted exactly these words.
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered not in _TRUE + _FALSE:
            raise PydanticCustomError("bool_parsing", "Input should be a valid boolean")
        return lowered in _TRUE
    return value


EnvBool = Annotated[bool, BeforeValidator(_parse_bool)]


class RelaySettings(BaseSettings):
    # No .env file is read (a stray one in the working directory must not reconfigure a relay); an empty
    # variable means unset.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_ignore_empty=True,
        env_file=None,
        frozen=True,
        extra="forbid",
    )

    #: RunPod endpoint base URL, e.g. https://api.runpod.ai/v2/ENDPOINT_ID. Empty: replay only, no polling.
    runpod_url: str = ""
    runpod_key: str = Field(default="", repr=False)
    data_dir: Path = Path("podstream-data")
    host: str = "127.0.0.1"
    port: int = 8700
    #: Public base URL of this relay (for the absolute URLs in responses); empty = taken from each request.
    public_url: str = ""

    # --- polling RunPod
    #: `?wait=` of each `/stream` long-poll, in ms (RunPod accepts 1000..300000).
    poll_wait_ms: int = 10_000
    #: Retries of one RunPod call on 429/5xx/timeouts before it fails (the poller then backs off and retries).
    retries: NonNegativeInt = 5
    backoff_initial_s: PositiveFloat = 0.5
    backoff_max_s: PositiveFloat = 30.0
    connect_timeout_s: PositiveFloat = 10.0
    #: Extra time on top of `poll_wait_ms` before a `/stream` request counts as timed out.
    read_timeout_s: PositiveFloat = 30.0
    #: At most this many jobs are polled at once; more attach requests get 503.
    max_pollers: PositiveInt = 1000

    # --- store
    #: "always": the journal is fsynced after every poll response, before anything of it is published,
    #: and media files before they are renamed into place. "never": leave it to the OS (tests, benchmarks).
    fsync: Literal["always", "never"] = "always"
    #: Journal records kept in memory per open job (older ones are read back from disk).
    tail_records: PositiveInt = 1024
    #: Finished jobs are deleted this long after they finished (0 = keep forever); a job may ask for its own
    #: (`retention_s` in `POST /v1/jobs`), up to `max_retention_s`.
    retention_s: NonNegativeFloat = 3600.0
    max_retention_s: PositiveFloat = 30 * 24 * 3600.0
    #: Bytes the data directory may hold (0 = no quota). Above it the oldest finished jobs are deleted first;
    #: an item that still does not fit fails with `quota_exceeded`.
    disk_quota_bytes: NonNegativeInt = 0
    #: Largest accepted `POST /v1/jobs` body. Inline images over `stage_inline_bytes` are staged as inputs
    #: (below), so the body may exceed RunPod's 10 MB `/run` cap; what is forwarded to RunPod may not.
    max_submit_bytes: PositiveInt = 100_000_000
    #: The JSON Schema `POST /v1/jobs` checks inputs against (relay/api/input_schema.py): "builtin" (the built-in
    #: worker's), a file (a worker with its own input model), or "off".
    input_schema: str = "builtin"

    # --- websocket fan-out
    #: Bytes of an item per `chunk` frame (the protocol caps it at 256 KiB).
    chunk_bytes: int = 256 * 1024
    #: Encoded chunk frames shared between subscribers of the same bytes (bounded, least recently used out).
    chunk_cache_bytes: NonNegativeInt = 32 * 1024 * 1024
    #: A send that does not complete within this many seconds makes the subscriber slow: bye 4001.
    send_timeout_s: PositiveFloat = 10.0
    ping_interval_s: PositiveFloat = 20.0
    #: No frame from the client (pong or other) for this long after a ping: bye 4002.
    ping_timeout_s: PositiveFloat = 20.0
    max_frame_bytes: PositiveInt = 64 * 1024
    max_subscriptions: PositiveInt = 64
    max_connections: PositiveInt = 10_000
    #: Records per response of the long-poll JSON events API.
    max_events_per_response: PositiveInt = 1000

    # --- security (docs/relay.md, "Security")
    #: No authentication at all (local development only; logged loudly).
    insecure: EnvBool = False
    #: API keys as hashes: `[name=]sha256:<hex>[/scope+scope]`, comma or whitespace separated.
    api_keys: str = Field(default="", repr=False)
    #: A file of such entries, one per line (e.g. a mounted secret).
    api_keys_file: str = ""
    #: HMAC secret of subscriber tokens and media URL signatures (>= 32 bytes). Empty: a random one is made
    #: and kept in `<data_dir>/token-secret` (set it explicitly to keep tokens valid across a new data directory).
    token_secret: str = Field(default="", repr=False)
    token_audience: str = "podstream"
    token_ttl_s: PositiveFloat = 3600.0
    max_token_ttl_s: PositiveFloat = 24 * 3600.0
    media_url_ttl_s: PositiveFloat = 3600.0
    #: Cluster mode: answer `GET /v1/jobs/{id}/media/{item}` with 302 to a presigned bucket URL (valid for
    #: `media_url_ttl_s`), so browsers download from the bucket or its CDN and the relays carry no media bytes.
    media_redirect: EnvBool = False
    #: Websocket Origins allowed besides the relay's own (comma separated; `*` = any).
    allowed_origins: str = ""
    #: Origins allowed to call the HTTP API from a browser (CORS; comma separated; `*` = any; empty = none).
    cors_origins: str = ""
    #: Job submissions per API key per minute (then 429).
    submits_per_minute: PositiveInt = 60
    #: A websocket that needs a token and sends no `auth` frame within this: bye 4501.
    auth_timeout_s: PositiveFloat = 5.0
    #: Websockets waiting for their `auth` frame, at most (their own budget, apart from `max_connections`):
    #: past it the one waiting longest is closed (4004), so a flood of them cannot lock real clients out.
    max_pending_auth: PositiveInt = 1000

    # --- connections (relay.serve)
    #: A connection whose request headers are not complete within this is closed (idle or trickling).
    header_timeout_s: PositiveFloat = 5.0
    #: A request body that sends no byte for this long is answered 408 (`body_timeout`) and its connection
    #: closed: a stalled upload holds no connection for ever (relay.api.body_timeout).
    body_timeout_s: PositiveFloat = 30.0
    #: File descriptors kept free of client connections for journals, media and RunPod calls (0 = an eighth
    #: of RLIMIT_NOFILE, at least 64); connections past the rest are refused at once.
    fd_reserve: NonNegativeInt = 0
    #: "text" or "json" (one JSON object per line, with the job id where there is one).
    log_format: Literal["text", "json"] = "text"

    # --- job inputs (relay/api/inputs.py; docs/relay.md, "Job inputs")
    #: Largest accepted `PUT /v1/inputs` body (one image; the worker's own limit is 20 MB).
    max_input_bytes: PositiveInt = 20 * 1024 * 1024
    #: Bytes of staged inputs each API key may hold (0 = no quota).
    input_quota_bytes: NonNegativeInt = 10 * 1024**3
    #: How long the URL of a staged input in a submitted job stays valid: the job's time in RunPod's queue
    #: plus its execution timeout (RunPod's default queue TTL is 24 h).
    input_url_ttl_s: PositiveFloat = 3 * 24 * 3600.0
    #: A staged input no job refers to is deleted this long after it was last uploaded or looked up.
    input_ttl_s: PositiveFloat = 24 * 3600.0
    #: Inline images (data URLs, base64) in `POST /v1/jobs` longer than this are staged by the relay itself
    #: and sent to RunPod by reference (0 = never).
    stage_inline_bytes: NonNegativeInt = 64 * 1024

    # --- delivery and recovery (docs/relay.md, "Delivery and recovery")
    #: Largest accepted `PUT /v1/uploads/{job}/{item}` body (a worker's direct upload of one file).
    max_upload_bytes: PositiveInt = 4 * 1024**3
    #: An upload that no item claimed (no `ref` came for it) is deleted this long after it arrived (at once
    #: once its job has ended), by the retention sweep.
    upload_grace_s: PositiveFloat = 3600.0
    #: Gap recovery: `resend` jobs submitted for a job whose stream ended with gaps (0 = report, never resend).
    recovery_attempts: NonNegativeInt = 2
    #: How long one resend job may take (queued, run and drained) before the relay stops waiting for it.
    recovery_timeout_s: PositiveFloat = 300.0
    #: Tests only: SIGKILL the relay right after it drained its n-th non-empty `/stream` answer, before that
    #: answer is written (simulates a crash between draining and persisting). 0 = off.
    test_crash_after_drain: NonNegativeInt = 0

    @field_validator("runpod_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ConfigError(f"PODSTREAM_RUNPOD_URL must be an http(s) URL, got {value!r}")
        return value

    @field_validator("poll_wait_ms")
    @classmethod
    def _runpod_wait(cls, value: int) -> int:
        if not 1000 <= value <= 300_000:
            raise ConfigError("PODSTREAM_POLL_WAIT_MS must be between 1000 and 300000 (RunPod's range)")
        return value

    @field_validator("chunk_bytes")
    @classmethod
    def _chunk_cap(cls, value: int) -> int:
        if not 1 <= value <= 256 * 1024:
            raise ConfigError("PODSTREAM_CHUNK_BYTES must be between 1 and 262144")
        return value

    @field_validator("port")
    @classmethod
    def _port_range(cls, value: int) -> int:
        if not 0 <= value <= 65535:
            raise ConfigError(f"PODSTREAM_PORT out of range: {value}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Keyword construction (`RelaySettings(data_dir=...)`, the tests) is exactly the defaults plus those
        # keywords; only `from_env` reads an environment, and it is handed the one to read.
        return (init_settings,)

    @property
    def runpod_url_base(self) -> str:
        return self.runpod_url.rstrip("/")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> RelaySettings:
        """Settings from `PODSTREAM_*` variables, then `overrides` (None values are ignored)."""
        values = dict(_EnvironSource(cls, os.environ if environ is None else environ)())
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            raise _config_error(exc) from None


class _EnvironSource(EnvSettingsSource):
    """pydantic-settings' environment source, reading a given mapping instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # read by _load_env_vars, which the base __init__ calls
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Only the documented upper-case names, as the hand parser before it (`podstream_port` is not read);
        # the source itself matches them case-insensitively, so it wants them lower-cased.
        return {
            k.lower(): v
            for k, v in self._environ.items()
            if k == k.upper() and not (self.env_ignore_empty and v == "")
        }


def _config_error(exc: ValidationError) -> ConfigError:
    """The first problem of a ValidationError as one line naming its `PODSTREAM_*` variable."""
    errors = exc.errors()
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        return ConfigError(f"unknown setting(s): {unknown}")
    return _describe(errors[0])


def _describe(error: ErrorDetails) -> ConfigError:
    ctx = error.get("ctx", {})
    if isinstance(ctx.get("error"), ConfigError):  # raised by one of the validators above, already worded
        return ConfigError(str(ctx["error"]))
    var = f"{ENV_PREFIX}{str(error['loc'][0]).upper()}" if error["loc"] else "settings"
    got = error["input"]
    kind = error["type"]
    if kind in ("int_parsing", "float_parsing", "int_type", "float_type"):
        return ConfigError(f"{var} must be a number, got {got!r}")
    if kind == "int_from_float":
        return ConfigError(f"{var} must be a whole number, got {got!r}")
    if kind in ("bool_parsing", "bool_type"):
        return ConfigError(f"{var} must be true or false, got {got!r}")
    if kind == "greater_than" and ctx.get("gt") == 0:
        return ConfigError(f"{var} must be positive")
    if kind == "greater_than_equal":
        return ConfigError(f"{var} must be >= {ctx.get('ge'):g}")
    if kind == "literal_error":
        return ConfigError(f"{var} must be one of {ctx.get('expected')}, got {got!r}")
    return ConfigError(f"{var}: {error['msg']}, got {got!r}")
