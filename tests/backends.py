"""Throwaway databases for tests: a SQLite file, or a PostgreSQL database created and dropped."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

POSTGRES_DSN = os.environ.get(
    "BYTEOR_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)

#: Set to ``1`` (CI does) to turn "PostgreSQL or Redis is unreachable" from a skip into a failure.
REQUIRE_SERVICES_ENV = "BYTEOR_REQUIRE_SERVICES"

__all__ = ["POSTGRES_DSN", "REQUIRE_SERVICES_ENV", "service_unavailable", "throwaway_database"]


def service_unavailable(message: str) -> NoReturn:
    """Skip the calling test, saying why; fail it instead under ``BYTEOR_REQUIRE_SERVICES=1``."""
    if os.environ.get(REQUIRE_SERVICES_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_SERVICES_ENV}=1)", pytrace=False)
    pytest.skip(message)


async def _postgres_admin() -> Any:
    import asyncpg

    try:
        return await asyncpg.connect(POSTGRES_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        service_unavailable(f"PostgreSQL at {POSTGRES_DSN} is unreachable: {exc}")


@asynccontextmanager
async def throwaway_database(backend: str, directory: Path) -> AsyncIterator[str]:
    """Yield an async SQLAlchemy URL of an empty database that is removed afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{directory / 'byteor.db'}"
        return
    admin = await _postgres_admin()
    name = f"byteor_test_{secrets.token_hex(6)}"
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
