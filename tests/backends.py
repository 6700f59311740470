"""Throwaway databases for tests: a SQLite file, or a PostgreSQL database created and dropped."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

POSTGRES_DSN = os.environ.get(
    "BYTEOR_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)

__all__ = ["POSTGRES_DSN", "throwaway_database"]


async def _postgres_admin() -> Any:
    import asyncpg

    try:
        return await asyncpg.connect(POSTGRES_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL at {POSTGRES_DSN} is unreachable: {exc}")


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
