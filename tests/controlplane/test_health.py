from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from controlplane.app import create_app
from controlplane.db.migrate import head_revision
from controlplane.settings import Settings
from tests.conftest import Stack, in_process_client

pytestmark = pytest.mark.anyio


async def test_healthz_and_readyz(stack: Stack) -> None:
    assert (await stack.call("GET", "/healthz")).json() == {"status": "ok"}
    ready = await stack.call("GET", "/readyz")
    assert ready.status_code == 200
    assert ready.json()["schema_revision"] == head_revision()


async def _probe(settings: Settings, path: str) -> httpx.Response:
    app = create_app(settings)
    async with (
        app.lifespan(),
        in_process_client(app) as client,
    ):
        return await client.get(path)


async def test_readyz_is_503_before_migrations(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, auto_migrate=False)
    response = await _probe(settings, "/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert "byteor-controlplane migrate" in response.json()["detail"]
    assert (await _probe(settings, "/healthz")).status_code == 200


async def test_readyz_is_503_when_database_unreachable(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql+asyncpg://postgres@127.0.0.1:1/none",
        auto_migrate=False,
    )
    response = await _probe(settings, "/readyz")
    assert response.status_code == 503
    assert response.json()["detail"] == "Database is unreachable"
