"""The daemon's configuration: read by pydantic-settings in a helper process, held as a Struct."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from agent.config import (
    AgentConfig,
    Secret,
    SettingsError,
    decode_config,
    encode_config,
    load_config,
)
from agent.settings import AgentSettings

URL = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def _no_ambient_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("BYTEOR_"):
            monkeypatch.delenv(name)


def test_the_config_has_exactly_the_fields_and_defaults_of_the_settings() -> None:
    assert set(AgentConfig.__struct_fields__) == set(AgentSettings.model_fields)
    assert AgentSettings(api_base_url=URL).config() == AgentConfig(api_base_url=URL)


def test_secrets_never_show_themselves() -> None:
    config = AgentSettings(
        api_base_url=URL, agent_api_key="bak_sekrit", enrollment_token="bet_sekrit"
    ).config()
    assert isinstance(config.agent_api_key, Secret)
    assert config.agent_api_key.get_secret_value() == "bak_sekrit"
    assert config.enrollment_token is not None
    assert config.enrollment_token.get_secret_value() == "bet_sekrit"
    assert "sekrit" not in repr(config)
    assert "sekrit" not in str(config.agent_api_key)
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")


def test_a_config_survives_the_pipe_whole() -> None:
    config = AgentSettings(
        api_base_url=URL,
        agent_api_key="bak_x",
        state_dir=Path("/srv/agent-state"),
        heartbeat_interval_seconds=7.5,
        max_bundle_bytes=123,
    ).config()
    decoded = decode_config(encode_config(config))
    assert decoded == config
    assert isinstance(decoded.state_dir, Path)
    assert isinstance(decoded.agent_api_key, Secret)


def test_the_helper_reads_the_environment_and_the_env_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    env_file = tmp_path / "agent.env"
    env_file.write_text("BYTEOR_API_BASE_URL=http://127.0.0.1:8/\nBYTEOR_AGENT_ID=agt_file\n")
    monkeypatch.setenv("BYTEOR_AGENT_ID", "agt_env")
    monkeypatch.setenv("BYTEOR_AGENT_API_KEY", "bak_from_env")
    monkeypatch.setenv("BYTEOR_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("BYTEOR_HEARTBEAT_INTERVAL_SECONDS", "12")
    config = load_config(env_file)
    assert config == AgentSettings.from_env(env_file).config()
    assert config.api_base_url == "http://127.0.0.1:8"  # validated: trailing slash gone
    assert config.agent_id == "agt_env"  # the environment wins over the file
    assert config.agent_api_key == Secret("bak_from_env")
    assert config.state_dir == tmp_path / "state"
    assert config.heartbeat_interval_seconds == 12.0


@pytest.mark.parametrize(
    ("variables", "named", "why"),
    [
        ({}, "BYTEOR_API_BASE_URL", "Field required"),
        ({"BYTEOR_API_BASE_URL": "ftp://cp"}, "BYTEOR_API_BASE_URL", "http:// or https://"),
        (
            {"BYTEOR_API_BASE_URL": URL, "BYTEOR_HEARTBEAT_INTERVAL_SECONDS": "0"},
            "BYTEOR_HEARTBEAT_INTERVAL_SECONDS",
            "greater than or equal to 1",
        ),
    ],
)
def test_bad_settings_are_named_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], named: str, why: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as raised:
        load_config()
    message = str(raised.value)
    assert message.startswith(f"byteor-agent: invalid or missing settings: {named}")
    assert why in message


def test_a_secret_in_bad_settings_is_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYTEOR_API_BASE_URL", "not a url")
    monkeypatch.setenv("BYTEOR_AGENT_API_KEY", "bak_do_not_print")
    with pytest.raises(SettingsError) as raised:
        load_config()
    assert "bak_do_not_print" not in str(raised.value)


def test_a_missing_env_file_is_no_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BYTEOR_API_BASE_URL", URL)
    assert load_config(tmp_path / "absent.env").api_base_url == URL


def test_run_with_bad_settings_exits_2_with_the_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import main

    monkeypatch.setenv("BYTEOR_API_BASE_URL", "nope")
    assert main(["run"]) == 2
    err = capsys.readouterr().err
    assert "invalid or missing settings: BYTEOR_API_BASE_URL" in err
    assert "Traceback" not in err


def test_the_struct_refuses_what_the_helper_could_not_have_written() -> None:
    with pytest.raises(msgspec.ValidationError):
        decode_config(b'{"api_base_url": 5}')
