"""Cluster mode: the Redis and S3 clients a replica runs on, made from the settings and probed at start.

`Cluster.from_settings` builds the clients (credentials and region from the standard AWS variables, the
endpoint from `PODSTREAM_S3_ENDPOINT_URL` for MinIO/R2/moto) and `probe` checks both answer (Redis PING,
S3 HeadBucket) so a replica that cannot reach them says so in one line instead of failing on its first job.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from relay.storage.cluster.health import Probe, Unusable
from relay.storage.cluster.job_index import RedisJobIndex
from relay.storage.cluster.keys import Keys
from relay.storage.cluster.lease import RedisLeases
from relay.storage.cluster.s3_media import MediaUrl, S3MediaStore
from relay.storage.cluster.settings import ClusterSettings

if TYPE_CHECKING:
    from types_boto3_s3.client import S3Client
else:
    S3Client = Any


class ClusterUnavailable(Exception):
    """Redis or the bucket cannot be reached or used (one line, says which and why)."""


def replica_id(settings: ClusterSettings) -> str:
    """The replica's name in logs, metrics and leases: `--replica-id`, else hostname-pid."""
    return settings.replica_id or f"{socket.gethostname()}-{os.getpid()}"


def s3_client(endpoint_url: str, *, timeout_s: float | None = None) -> S3Client:
    """The replica's S3 client; with `timeout_s`, one for probes: that timeout to connect and to read, and
    no retries."""
    import boto3  # only cluster mode needs it
    from botocore.config import Config

    # SigV4 for presigned URLs too: botocore would presign SigV2 for us-east-1, which AWS refuses for newer
    # buckets and R2 never took.
    config = Config(
        retries={"max_attempts": 3, "mode": "standard"} if timeout_s is None else {"total_max_attempts": 1},
        connect_timeout=5 if timeout_s is None else timeout_s,
        read_timeout=30 if timeout_s is None else timeout_s,
        signature_version="s3v4",
    )
    client: S3Client = boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)
    return client


@dataclass
class Cluster:
    replica: str
    redis: redis.Redis
    media: S3MediaStore
    leases: RedisLeases
    index: RedisJobIndex
    keys: Keys

    @classmethod
    def from_settings(cls, settings: ClusterSettings, *, spool_dir: Path | None = None) -> Cluster:
        keys = Keys()
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30)
        media = S3MediaStore(
            s3_client(settings.s3_endpoint_url), MediaUrl.parse(settings.media_url), spool_dir=spool_dir
        )
        replica = replica_id(settings)
        leases = RedisLeases(client, replica, ttl_s=settings.lease_ttl_s, keys=keys)
        return cls(replica, client, media, leases, RedisJobIndex(client, keys), keys)

    def probe(self) -> None:
        """Raise `ClusterUnavailable` unless Redis answers PING and the bucket HeadBucket."""
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise ClusterUnavailable(f"cannot reach Redis at {_where(self.redis)}: {exc}") from None
        bucket = self.media.url.bucket
        try:
            self.media.client.head_bucket(Bucket=bucket)
        except Exception as exc:  # botocore: ClientError (404, 403), EndpointConnectionError, NoCredentials
            raise ClusterUnavailable(f"cannot use the bucket {bucket!r}: {exc}") from None

    def probes(self, settings: ClusterSettings, deadline_s: float) -> list[Probe]:
        """Readiness probes of Redis (PING) and the bucket (HeadBucket), each on a client of its own whose
        timeouts are `deadline_s`, without retries: a hung probe ends by itself soon after its deadline."""
        where, bucket = _where(self.redis), self.media.url.bucket
        client = redis.Redis.from_url(
            settings.redis_url, socket_connect_timeout=deadline_s, socket_timeout=deadline_s,
            retry=Retry(NoBackoff(), 0),
        )  # fmt: skip
        s3 = s3_client(settings.s3_endpoint_url, timeout_s=deadline_s)

        def ping() -> None:
            try:
                client.ping()
            except redis.RedisError as exc:
                raise Unusable(f"cannot reach Redis at {where}: {exc}") from None

        def head_bucket() -> None:
            try:
                s3.head_bucket(Bucket=bucket)
            except Exception as exc:  # botocore: ClientError (404, 403), EndpointConnectionError, timeouts
                raise Unusable(f"cannot use the bucket {bucket!r}: {exc}") from None

        return [
            Probe(f"Redis at {where}", ping, close=client.close),
            Probe(f"the bucket {bucket!r}", head_bucket, close=s3.close),
        ]

    def close(self) -> None:
        self.redis.close()


def _where(client: redis.Redis) -> str:
    kwargs = client.connection_pool.connection_kwargs
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}"


def start_check(settings: ClusterSettings) -> str:
    """At `podstream relay` start in cluster mode: make the clients and probe them, and find out what the
    bucket checks of a PUT (`S3MediaStore.checks`: it writes and deletes a small object); returns a line
    saying what the replica runs on. Raises `ClusterUnavailable` (one line) when Redis or the bucket cannot
    be used."""
    cluster = Cluster.from_settings(settings)
    bucket = cluster.media.url.bucket
    try:
        cluster.probe()
        try:
            checks = cluster.media.checks()
        except Exception as exc:  # botocore: ClientError (403), EndpointConnectionError, ...
            raise ClusterUnavailable(f"cannot write to the bucket {bucket!r}: {exc}") from None
    finally:
        cluster.close()
    return f"replica {cluster.replica}: Redis at {_where(cluster.redis)}, media in s3://{bucket} (which {checks})"
