"""ClusterSettings: both URLs or neither, each checked, the token secret required in cluster mode."""

from __future__ import annotations

import pytest

from relay.config import ConfigError, RelaySettings
from relay.storage.cluster.settings import ClusterSettings


def test_neither_url_is_the_default_single_process_relay() -> None:
    cluster = ClusterSettings.from_env({})
    assert not cluster.enabled and cluster.lease_ttl_s == 10.0
    cluster.check(RelaySettings())  # no token secret needed without cluster mode


def test_both_urls_from_the_environment_or_overrides() -> None:
    env = {
        "PODSTREAM_REDIS_URL": "redis://r:6379/0",
        "PODSTREAM_MEDIA_URL": "s3://b/p",
        "PODSTREAM_LEASE_TTL_S": "4",
    }
    cluster = ClusterSettings.from_env(env, replica_id="relay-2")
    assert cluster.enabled and cluster.lease_ttl_s == 4.0 and cluster.replica_id == "relay-2"
    assert ClusterSettings.from_env(env, media_url="s3://other").media_url == "s3://other"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PODSTREAM_REDIS_URL": "redis://r"}, "cluster mode needs PODSTREAM_MEDIA_URL"),
        ({"PODSTREAM_MEDIA_URL": "s3://b"}, "cluster mode needs PODSTREAM_REDIS_URL"),
        ({"PODSTREAM_REDIS_URL": "http://r", "PODSTREAM_MEDIA_URL": "s3://b"}, "must be a redis://"),
        ({"PODSTREAM_REDIS_URL": "redis://r", "PODSTREAM_MEDIA_URL": "/data"}, "must be s3://BUCKET"),
        (
            {
                "PODSTREAM_REDIS_URL": "redis://r",
                "PODSTREAM_MEDIA_URL": "s3://b",
                "PODSTREAM_S3_ENDPOINT_URL": "minio:9000",
            },
            "PODSTREAM_S3_ENDPOINT_URL must be an http",
        ),
        ({"PODSTREAM_REPLICA_ID": "a|b"}, "must not contain"),
        ({"PODSTREAM_LEASE_TTL_S": "0"}, "LEASE_TTL_S must be positive"),
        ({"PODSTREAM_LEASE_TTL_S": "soon"}, "LEASE_TTL_S must be a number"),
    ],
)
def test_bad_cluster_settings_say_what_is_wrong(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ClusterSettings.from_env(env)


def test_cluster_mode_needs_the_shared_token_secret() -> None:
    cluster = ClusterSettings(redis_url="redis://r", media_url="s3://b")
    with pytest.raises(ConfigError, match="cluster mode needs PODSTREAM_TOKEN_SECRET"):
        cluster.check(RelaySettings())
    cluster.check(RelaySettings(token_secret="x" * 32))
