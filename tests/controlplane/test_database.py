"""The schema: migrations match the models, and SQLite runs with the durable settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from controlplane.db import Base, create_database
from controlplane.db.migrate import current_revision, head_revision, upgrade
from tests.backends import throwaway_database

pytestmark = pytest.mark.anyio


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_migrations_match_models(backend: str, tmp_path: Path) -> None:
    async with throwaway_database(backend, tmp_path) as url:
        database = create_database(url)
        try:
            assert await current_revision(database.engine) is None
            await upgrade(database.engine)
            await upgrade(database.engine)  # idempotent
            assert await current_revision(database.engine) == head_revision()
            async with database.engine.connect() as connection:
                assert await connection.run_sync(_diff) == []
        finally:
            await database.dispose()


async def test_sqlite_pragmas(tmp_path: Path) -> None:
    database = create_database(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    try:
        async with database.engine.connect() as connection:
            journal = (await connection.execute(text("PRAGMA journal_mode"))).scalar()
            synchronous = (await connection.execute(text("PRAGMA synchronous"))).scalar()
            foreign_keys = (await connection.execute(text("PRAGMA foreign_keys"))).scalar()
        assert journal == "wal"
        assert synchronous == 2  # FULL
        assert foreign_keys == 1
    finally:
        await database.dispose()
