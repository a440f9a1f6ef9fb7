"""relay.config: one frozen settings object from the environment, then explicit overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

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
    assert settings.runpod_key == "secret" and "secret" not in repr(settings)
    with pytest.raises(ValidationError, match="frozen"):
        settings.port = 1  # frozen (mypy does not know it without the pydantic plugin)


def test_overrides_win_over_the_environment_and_empty_means_unset() -> None:
    env = {"PODSTREAM_PORT": "8001", "PODSTREAM_FSYNC": "never", "PODSTREAM_HOST": ""}
    settings = RelaySettings.from_env(env, port=8002)
    assert (settings.port, settings.fsync, settings.host) == (8002, "never", "127.0.0.1")


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PODSTREAM_MAX_PENDING_AUTH", "7")
    assert RelaySettings.from_env().max_pending_auth == 7
    # keyword construction is the defaults plus the keywords: it does not read the environment
    assert RelaySettings(port=1).max_pending_auth == 1000


def test_only_relay_variables_in_upper_case_are_read() -> None:
    # other components' PODSTREAM_* variables (worker, cluster) share the prefix and are not errors
    env = {"PODSTREAM_REDIS_URL": "redis://x", "PODSTREAM_OUTPUT_DIR": "/out", "podstream_port": "1"}
    assert RelaySettings.from_env(env).port == 8700


def test_no_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("PODSTREAM_PORT=1234\nPODSTREAM_INSECURE=1\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    settings = RelaySettings.from_env({})
    assert settings.port == 8700 and settings.insecure is False


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("true", True), ("Yes", True), (" on ", True), ("0", False), ("false", False),
     ("NO", False), ("off", False)],
)  # fmt: skip
def test_bool_words(raw: str, expected: bool) -> None:
    assert RelaySettings.from_env({"PODSTREAM_INSECURE": raw}).insecure is expected


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


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PODSTREAM_PORT": "eighty"}, "PODSTREAM_PORT must be a number, got 'eighty'"),
        ({"PODSTREAM_RETENTION_S": "soon"}, "PODSTREAM_RETENTION_S must be a number, got 'soon'"),
        ({"PODSTREAM_RETRIES": "1.5"}, "PODSTREAM_RETRIES must be a number, got '1.5'"),
        ({"PODSTREAM_INSECURE": "maybe"}, "PODSTREAM_INSECURE must be true or false, got 'maybe'"),
        ({"PODSTREAM_INSECURE": "t"}, "PODSTREAM_INSECURE must be true or false, got 't'"),
        ({"PODSTREAM_RETENTION_S": "-1"}, "PODSTREAM_RETENTION_S must be >= 0"),
        ({"PODSTREAM_PORT": "70000"}, "PODSTREAM_PORT out of range: 70000"),
        ({"PODSTREAM_LOG_FORMAT": "xml"}, "PODSTREAM_LOG_FORMAT must be one of 'text' or 'json', got 'xml'"),
    ],
)
def test_error_messages_are_one_line_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RelaySettings.from_env(env)
    assert str(caught.value) == message


def test_bad_override_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^PODSTREAM_MAX_PENDING_AUTH must be positive$"):
        RelaySettings.from_env({}, max_pending_auth=0)
    with pytest.raises(ConfigError, match=r"^PODSTREAM_RETRIES must be a whole number, got 1\.5$"):
        RelaySettings.from_env({}, retries=1.5)


def test_unknown_overrides_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        RelaySettings.from_env({}, colour="blue")
    with pytest.raises(ConfigError, match=r"^unknown setting\(s\): \['colour', 'size'\]$"):
        RelaySettings.from_env({}, colour="blue", size=3)
