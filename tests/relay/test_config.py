"""relay.config: one frozen settings object from the environment, then explicit overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from relay.config import ConfigError, RelaySettings


def test_environment_then_overrides() -> None:
    env = {
        "PODSTREAM_RUNPOD_URL": "https://api.runpod.ai/v2/abc/", "PODSTREAM_RUNPOD_KEY": "secret",
        "PODSTREAM_DATA_DIR": "/tmp/x", "PODSTREAM_POLL_WAIT_MS": "30000", "PODSTREAM_SEND_TIMEOUT_S": "2.5",
        "PODSTREAM_PORT": "",
    }  # fmt: skip
    settings = RelaySettings.from_env(env, port=9000, host=None)
    assert settings.runpod_url_base == "https://api.runpod.ai/v2/abc"
    assert settings.data_dir == Path("/tmp/x") and settings.poll_wait_ms == 30000
    assert settings.send_timeout_s == 2.5 and settings.port == 9000 and settings.host == "127.0.0.1"
    assert "secret" not in repr(settings)
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PODSTREAM_POLL_WAIT_MS": "abc"}, "must be a number"),
        ({"PODSTREAM_POLL_WAIT_MS": "500"}, "between 1000 and 300000"),
        ({"PODSTREAM_RUNPOD_URL": "api.runpod.ai"}, "http(s) URL"),
        ({"PODSTREAM_FSYNC": "sometimes"}, "PODSTREAM_FSYNC"),
        ({"PODSTREAM_CHUNK_BYTES": "300000"}, "262144"),
        ({"PODSTREAM_SEND_TIMEOUT_S": "0"}, "PODSTREAM_SEND_TIMEOUT_S must be positive"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RelaySettings.from_env(env)


def test_unknown_overrides_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        RelaySettings.from_env({}, colour="blue")
