from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from controlplane.settings import DeploymentMode, Settings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("API_BIND_ADDR", "DATA_DIR", "DATABASE_URL", "AUTO_MIGRATE"):
        monkeypatch.delenv(f"BYTEOR_CLOUD_{name}", raising=False)
    settings = Settings()
    assert settings.api_bind_addr == "127.0.0.1:8080"
    assert (settings.bind_host, settings.bind_port) == ("127.0.0.1", 8080)
    assert settings.data_dir == Path("./byteor-data")
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")
    assert settings.resolved_database_url.endswith("byteor-data/byteor.db")
    assert settings.should_auto_migrate
    assert settings.deployment_mode is DeploymentMode.COMBINED
    assert settings.max_request_body_bytes == 4 * 1024 * 1024


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BYTEOR_CLOUD_API_BIND_ADDR", "[::1]:9000")
    monkeypatch.setenv("BYTEOR_CLOUD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BYTEOR_CLOUD_DATABASE_URL", "postgresql+asyncpg://u@h/db")
    settings = Settings()
    assert (settings.bind_host, settings.bind_port) == ("::1", 9000)
    assert settings.data_dir == tmp_path
    assert not settings.is_sqlite
    assert not settings.should_auto_migrate


@pytest.mark.parametrize("value", ["8080", "host:", "host:99999", ":80", "host:http"])
def test_bad_bind_addr(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("BYTEOR_CLOUD_API_BIND_ADDR", value)
    with pytest.raises(ValidationError, match="host:port"):
        Settings()
