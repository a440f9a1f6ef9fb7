"""`podstream relay` in cluster mode, as a real process against a real redis-server and an S3 server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bench._relay_stack import free_port, wait_healthy
from relay.api.auth import hash_key
from relay.storage.cluster.cluster import Cluster, ClusterUnavailable, replica_id
from relay.storage.cluster.settings import ClusterSettings
from tests.relay.conftest import API_KEY, TOKEN_SECRET
from tests.relay.storage.conftest import AWS_ENV, S3_SERVERS, RedisServer, S3Server


def relay(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        **os.environ,
        **AWS_ENV,
        "PODSTREAM_API_KEYS": hash_key(API_KEY),
        "PODSTREAM_DATA_DIR": str(tmp_path),
    }
    for name in ("PODSTREAM_REDIS_URL", "PODSTREAM_MEDIA_URL", "PODSTREAM_TOKEN_SECRET"):
        base.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "podstream", "relay", "--port", str(free_port()), *args],
        capture_output=True, text=True, timeout=60, env={**base, **env},
    )  # fmt: skip


def test_only_one_url_is_exit_2_saying_what_is_missing(tmp_path: Path) -> None:
    result = relay(tmp_path, "--redis-url", "redis://127.0.0.1:1/0", PODSTREAM_TOKEN_SECRET=TOKEN_SECRET)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "podstream relay: cluster mode needs PODSTREAM_MEDIA_URL (--media-url s3://BUCKET/PREFIX) as well as "
        "PODSTREAM_REDIS_URL"
    ]
    result = relay(tmp_path, PODSTREAM_MEDIA_URL="s3://media/x", PODSTREAM_TOKEN_SECRET=TOKEN_SECRET)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "cluster mode needs PODSTREAM_REDIS_URL (--redis-url redis://HOST:PORT/DB)" in result.stderr


def test_cluster_mode_without_a_token_secret_is_exit_2(tmp_path: Path) -> None:
    result = relay(tmp_path, "--redis-url", "redis://127.0.0.1:1/0", "--media-url", "s3://media/x")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "podstream relay: cluster mode needs PODSTREAM_TOKEN_SECRET (the same on every replica: tokens and "
        "signed URLs issued by one replica are checked by the others)"
    ]
    assert not (tmp_path / "token-secret").exists()  # refused before anything was written


def test_unreachable_redis_or_bucket_is_one_line_exit_1(
    tmp_path: Path, redis_server: RedisServer, s3_server: S3Server
) -> None:
    common = ("--s3-endpoint-url", s3_server.endpoint_url, "--media-url", "s3://media/relay")
    result = relay(
        tmp_path,
        "--redis-url",
        f"redis://127.0.0.1:{free_port()}/0",
        *common,
        PODSTREAM_TOKEN_SECRET=TOKEN_SECRET,
    )
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(
        "podstream relay: cannot reach Redis at 127.0.0.1:"
    )
    result = relay(
        tmp_path, "--redis-url", redis_server.url, "--s3-endpoint-url", s3_server.endpoint_url,
        "--media-url", "s3://no-such-bucket/x", PODSTREAM_TOKEN_SECRET=TOKEN_SECRET,
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("podstream relay: cannot use the bucket 'no-such-bucket'")
    )


@pytest.mark.parametrize("s3_kind", S3_SERVERS)
def test_a_replica_probes_its_backends_then_serves_and_stops_cleanly(
    tmp_path: Path, redis_server: RedisServer, s3_server: S3Server
) -> None:
    """With both URLs the relay probes Redis and the bucket, says what it runs on and what the bucket checks
    of a PUT (neither test server checks a digest), serves as a replica (ready on /readyz, the jobs listed
    from Redis) and gives everything back on SIGTERM."""
    port = free_port()
    env = {
        **os.environ, **AWS_ENV, "PODSTREAM_API_KEYS": hash_key(API_KEY), "PODSTREAM_DATA_DIR": str(tmp_path),
        "PODSTREAM_TOKEN_SECRET": TOKEN_SECRET,
    }  # fmt: skip
    log = tmp_path / "relay.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "podstream", "relay", "--port", str(port), "--redis-url", redis_server.url,
             "--media-url", "s3://media/relay", "--s3-endpoint-url", s3_server.endpoint_url,
             "--replica-id", "relay-a"],
            stdout=out, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
    try:
        asyncio.run(wait_healthy(f"http://127.0.0.1:{port}", timeout_s=60, process=process, log=log))
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz")
        assert ready.status_code == 200, ready.text
        jobs = httpx.get(f"http://127.0.0.1:{port}/v1/jobs", headers={"authorization": f"Bearer {API_KEY}"})
        assert jobs.status_code == 200 and jobs.json()["jobs"] == []
    finally:
        process.terminate()
        # uvicorn shuts down, then re-raises the SIGTERM it caught (exit -15), as a supervisor expects
        assert process.wait(30) in (0, -15)
    text = log.read_text()
    assert "Application shutdown complete" in text
    assert "cluster mode: replica relay-a: Redis at 127.0.0.1:" in text
    assert "media in s3://media (which checks no digest of a PUT: uploads are proven by its ETag" in text
    probes = s3_server.client().list_objects_v2(Bucket="media", Prefix="relay/_probe/")
    assert probes["KeyCount"] == 0, "the probe's object is deleted"
    assert "Traceback" not in text


def test_probe_in_process(redis_server: RedisServer, s3_server: S3Server) -> None:
    settings = ClusterSettings(redis_server.url, "s3://media/p", s3_server.endpoint_url)
    cluster = Cluster.from_settings(settings)
    cluster.probe()
    assert cluster.replica == replica_id(settings) and cluster.replica.endswith(f"-{os.getpid()}")
    assert cluster.leases.acquire("job") is not None
    cluster.close()
    missing = Cluster.from_settings(
        ClusterSettings(redis_server.url, "s3://absent/p", s3_server.endpoint_url)
    )
    with pytest.raises(ClusterUnavailable, match="cannot use the bucket 'absent'"):
        missing.probe()
    missing.close()
