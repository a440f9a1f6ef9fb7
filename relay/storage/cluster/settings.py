"""Cluster-mode settings: where a replica's Redis and bucket are, and its name.

    PODSTREAM_REDIS_URL        --redis-url        redis://HOST:PORT/DB (rediss:// for TLS)
    PODSTREAM_MEDIA_URL        --media-url        s3://BUCKET/PREFIX
    PODSTREAM_S3_ENDPOINT_URL  --s3-endpoint-url  MinIO, R2, RunPod's S3 API (empty: AWS S3)
    PODSTREAM_REPLICA_ID       --replica-id       the replica's name in logs, metrics, leases (hostname-pid)
    PODSTREAM_LEASE_TTL_S      (no flag)          a job's poller lease (10 s): takeover within 1.5x this

Both URLs set = cluster mode; one without the other is a configuration error naming the missing one.
Credentials and region come from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION). Kept apart from `relay.config.RelaySettings` so the single-process default reads
none of it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relay.config import ConfigError, RelaySettings
from relay.storage.cluster.s3_media import MediaUrl, MediaUrlError
from relay.storage.protocols import DEFAULT_LEASE_TTL_S

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(frozen=True)
class ClusterSettings:
    redis_url: str = ""
    media_url: str = ""
    s3_endpoint_url: str = ""
    replica_id: str = ""
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url and self.media_url)

    def __post_init__(self) -> None:
        if self.redis_url and not self.media_url:
            raise ConfigError(
                "cluster mode needs PODSTREAM_MEDIA_URL (--media-url s3://BUCKET/PREFIX) "
                "as well as PODSTREAM_REDIS_URL"
            )
        if self.media_url and not self.redis_url:
            raise ConfigError(
                "cluster mode needs PODSTREAM_REDIS_URL (--redis-url redis://HOST:PORT/DB) "
                "as well as PODSTREAM_MEDIA_URL"
            )
        if self.redis_url and not self.redis_url.startswith(REDIS_SCHEMES):
            raise ConfigError(
                f"PODSTREAM_REDIS_URL must be a redis:// or rediss:// URL, got {self.redis_url!r}"
            )
        if self.media_url:
            try:
                MediaUrl.parse(self.media_url)
            except MediaUrlError as exc:
                raise ConfigError(str(exc)) from None
        if self.s3_endpoint_url and not self.s3_endpoint_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"PODSTREAM_S3_ENDPOINT_URL must be an http(s) URL, got {self.s3_endpoint_url!r}"
            )
        if "|" in self.replica_id:
            raise ConfigError("PODSTREAM_REPLICA_ID must not contain '|'")
        if not self.lease_ttl_s > 0:
            raise ConfigError("PODSTREAM_LEASE_TTL_S must be positive")

    def check(self, relay: RelaySettings) -> None:
        """What cluster mode needs of the rest of the settings: every replica must verify the tokens and
        signed URLs the others issued, so the token secret is set explicitly (the same on each)."""
        if self.enabled and not relay.token_secret:
            raise ConfigError(
                "cluster mode needs PODSTREAM_TOKEN_SECRET (the same on every replica: tokens and signed "
                "URLs issued by one replica are checked by the others)"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ClusterSettings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in ("redis_url", "media_url", "s3_endpoint_url", "replica_id", "lease_ttl_s"):
            raw = env.get("PODSTREAM_" + name.upper())
            if raw:
                values[name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "lease_ttl_s" in values:
            try:
                values["lease_ttl_s"] = float(values["lease_ttl_s"])
            except ValueError:
                raise ConfigError(
                    f"PODSTREAM_LEASE_TTL_S must be a number, got {values['lease_ttl_s']!r}"
                ) from None
        return cls(**values)
