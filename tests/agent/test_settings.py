"""AgentSettings: BYTEOR_* variables, env files, validation."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from agent.settings import DEFAULT_SPEC, DEFAULT_STATE_DIR, AgentSettings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No BYTEOR_* variable of the machine running the tests leaks in."""
    for name in list(os.environ):
        if name.upper().startswith("BYTEOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_env_var_names(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "BYTEOR_API_BASE_URL": "https://cp.example.com/",
        "BYTEOR_AGENT_ID": "agt_1",
        "BYTEOR_AGENT_API_KEY": "byteor_ak_secret",
        "BYTEOR_ENROLLMENT_TOKEN": "byteor_et_secret",
        "BYTEOR_ORG_ID": "org_1",
        "BYTEOR_PROJECT_ID": "prj_1",
        "BYTEOR_ENVIRONMENT_ID": "env_1",
        "BYTEOR_AGENT_NAME": "web-1",
        "BYTEOR_STATE_DIR": "/srv/agent",
        "BYTEOR_SPEC": "/srv/spec.kv",
        "BYTEOR_ACTIVATION_COMMAND": "systemctl restart pipeline",
        "BYTEOR_HEALTH_CHECK_COMMAND": "/usr/bin/true",
        "BYTEOR_HEARTBEAT_INTERVAL_SECONDS": "15",
        "BYTEOR_HTTP_TIMEOUT_SECONDS": "3.5",
        "BYTEOR_MAX_RETRY_ATTEMPTS": "4",
        "BYTEOR_MAX_BACKOFF_SECONDS": "20",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)

    settings = AgentSettings.from_env()

    assert settings.api_base_url == "https://cp.example.com"
    assert settings.agent_id == "agt_1"
    assert settings.agent_api_key is not None
    assert settings.agent_api_key.get_secret_value() == "byteor_ak_secret"
    assert settings.enrollment_token is not None
    assert settings.enrollment_token.get_secret_value() == "byteor_et_secret"
    assert (settings.org_id, settings.project_id, settings.environment_id) == (
        "org_1",
        "prj_1",
        "env_1",
    )
    assert settings.agent_name == "web-1"
    assert settings.state_dir == Path("/srv/agent")
    assert settings.spec == Path("/srv/spec.kv")
    assert settings.activation_command == "systemctl restart pipeline"
    assert settings.health_check_command == "/usr/bin/true"
    assert settings.heartbeat_interval_seconds == 15
    assert settings.http_timeout_seconds == 3.5
    assert settings.max_retry_attempts == 4
    assert settings.max_backoff_seconds == 20
    assert "secret" not in repr(settings)


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYTEOR_API_BASE_URL", "http://localhost:8000")
    settings = AgentSettings.from_env()
    assert settings.agent_id is None
    assert settings.agent_api_key is None
    assert settings.enrollment_token is None
    assert settings.state_dir == DEFAULT_STATE_DIR == Path("/var/lib/byteor-agent")
    assert settings.spec == DEFAULT_SPEC == Path("/etc/byteor/spec.kv")
    assert settings.heartbeat_interval_seconds == 30
    assert settings.http_timeout_seconds == 10
    assert settings.max_retry_attempts == 6
    assert settings.max_backoff_seconds == 60


def test_env_file_is_loaded_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_file = tmp_path / "agent.env"
    env_file.write_text(
        "BYTEOR_API_BASE_URL=https://cp.example.com\n"
        "BYTEOR_AGENT_ID=agt_from_file\n"
        "BYTEOR_ENROLLMENT_TOKEN=byteor_et_file\n"
        "BYTEOR_AGENT_NAME=\n"
        "UNRELATED=1\n"
    )
    settings = AgentSettings.from_env(env_file)
    assert settings.api_base_url == "https://cp.example.com"
    assert settings.agent_id == "agt_from_file"
    assert settings.enrollment_token is not None
    assert settings.enrollment_token.get_secret_value() == "byteor_et_file"
    assert settings.agent_name is None  # empty values count as unset

    monkeypatch.setenv("BYTEOR_AGENT_ID", "agt_from_env")
    assert AgentSettings.from_env(env_file).agent_id == "agt_from_env"


def test_no_env_file_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("BYTEOR_API_BASE_URL=https://from-dotenv.example.com\n")
    with pytest.raises(ValidationError, match="api_base_url"):
        AgentSettings.from_env()


@pytest.mark.parametrize(
    "url",
    ["cp.example.com", "ftp://cp.example.com", "http://", "https:///path", "https://h/?a=1", ""],
)
def test_bad_url_is_rejected(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("BYTEOR_API_BASE_URL", url)
    with pytest.raises(ValidationError, match="api_base_url"):
        AgentSettings.from_env()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://cp.example.com/", "https://cp.example.com"),
        (" http://10.0.0.5:8000 ", "http://10.0.0.5:8000"),
        ("https://example.com/byteor//", "https://example.com/byteor"),
    ],
)
def test_url_is_normalised(url: str, expected: str) -> None:
    assert AgentSettings(api_base_url=url).api_base_url == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BYTEOR_HEARTBEAT_INTERVAL_SECONDS", "0.5"),
        ("BYTEOR_MAX_RETRY_ATTEMPTS", "0"),
        ("BYTEOR_HTTP_TIMEOUT_SECONDS", "0"),
        ("BYTEOR_MAX_BACKOFF_SECONDS", "-1"),
    ],
)
def test_bounds(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv("BYTEOR_API_BASE_URL", "https://cp.example.com")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        AgentSettings.from_env()


def test_every_field_is_described() -> None:
    for name, info in AgentSettings.model_fields.items():
        assert info.description, name
