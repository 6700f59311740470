"""The schema: migrations match the models; SQLite runs with the durable settings and waits
for locks without stalling the event loop."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text
from sqlalchemy.exc import OperationalError

from controlplane.db import Base, Database, create_database
from controlplane.db import engine as engine_module
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


class _Ticks:
    """Counts how often the event loop got to run a 5 ms timer: a stalled loop counts none."""

    def __init__(self) -> None:
        self.count = 0
        self.longest = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            before = loop.time()
            await asyncio.sleep(0.005)
            self.longest = max(self.longest, loop.time() - before)
            self.count += 1


async def _insert(database: Database, name: str) -> None:
    async with database.sessionmaker() as session:
        await session.execute(text("INSERT INTO t (name) VALUES (:name)"), {"name": name})
        await session.commit()


async def test_a_sqlite_writer_waits_for_another_process_lock_without_stalling_the_loop(
    tmp_path: Path,
) -> None:
    """Statements run on the loop's thread; a lock wait must be spent in asyncio, not sleeping
    in SQLite's busy handler, or every request of the process stops while it lasts."""
    path = tmp_path / "x.db"
    database = create_database(f"sqlite+aiosqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await _insert_table(database)
        other.execute("BEGIN IMMEDIATE")  # another process writes
        ticks, stop = _Ticks(), asyncio.Event()
        ticker = asyncio.create_task(ticks.run(stop))
        writer = asyncio.create_task(_insert(database, "waited"))
        await asyncio.sleep(0.4)
        assert not writer.done()  # it waits for the lock ...
        assert ticks.count >= 20, ticks.count  # ... while the loop goes on
        other.execute("COMMIT")
        await asyncio.wait_for(writer, timeout=5)  # and writes once the lock is free
        stop.set()
        await ticker
        assert ticks.longest < 0.2, ticks.longest
        async with database.readers() as session:
            names = (await session.execute(text("SELECT name FROM t"))).scalars().all()
        assert names == ["waited"]
    finally:
        other.close()
        await database.dispose()


async def test_a_sqlite_lock_held_past_the_wait_bound_fails_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", 300)
    path = tmp_path / "x.db"
    database = create_database(f"sqlite+aiosqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await _insert_table(database)
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(OperationalError, match="database is locked"):
            await _insert(database, "refused")
        assert 0.25 < time.monotonic() - started < 5
        other.execute("ROLLBACK")
        await _insert(database, "later")  # the connection is usable again
        assert other.execute("SELECT name FROM t").fetchall() == [("later",)]
    finally:
        other.close()
        await database.dispose()


async def _insert_table(database: Database) -> None:
    async with database.engine.begin() as connection:
        await connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)"))
