"""How sessions reach the database: one parameter for a list of values, autocommit reads on
PostgreSQL, locking reads refused in a read transaction, and pooled connections pinged only
after sitting idle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import DBAPIError

from controlplane.db import Database, ReadOnlyTransaction, begin_write, create_database
from controlplane.db import engine as engine_module
from controlplane.db.migrate import upgrade
from controlplane.db.models import OrganizationRow
from controlplane.db.values import one_of
from controlplane.errors import database_unavailable
from tests.backends import _postgres_admin, throwaway_database

pytestmark = pytest.mark.anyio

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@asynccontextmanager
async def seeded(backend: str, tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated database of ``backend`` with five organizations."""
    async with throwaway_database(backend, tmp_path) as url:
        database = create_database(url)
        try:
            await upgrade(database.engine)
            async with database.sessionmaker() as session:
                session.add_all(
                    OrganizationRow(id=f"org_{n}", name=f"org {n}", runtime_config={})
                    for n in range(5)
                )
                await session.commit()
            yield database
        finally:
            await database.dispose()


@pytest.fixture(params=BACKENDS)
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with seeded(request.param, tmp_path) as database:
        yield database


class _Parameters:
    """The number of bound parameters of every statement an engine sends."""

    def __init__(self, database: Database) -> None:
        self.counts: list[int] = []
        self._engine = database.reader_engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        statement, parameters = args[2], args[3]
        if "organizations" in statement:
            self.counts.append(len(parameters) if parameters is not None else 0)

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)


@pytest.mark.parametrize("size", [0, 1, 3, 6_000])
async def test_one_of_matches_the_rows_named_and_sends_one_parameter(
    database: Database, size: int
) -> None:
    """The same rows as ``IN``, whatever the list's length; the list is one bound parameter."""
    names = [f"org_{n}" for n in (1, 3, 99)][:size] + [f"absent_{n}" for n in range(size - 3)]
    parameters = _Parameters(database)
    try:
        async with database.readers() as session:
            found = set(
                await session.scalars(
                    select(OrganizationRow.id).where(one_of(session, OrganizationRow.id, names))
                )
            )
    finally:
        parameters.close()
    assert found == {name for name in names if name in {"org_1", "org_3"}}
    assert parameters.counts == [1]


async def test_a_locking_read_is_refused_in_a_read_transaction(database: Database) -> None:
    """In an autocommit read the lock would end with the statement: it is refused, as a write.

    Also on SQLite, which renders no ``FOR UPDATE``: the tests on the default backend catch it.
    """
    async with database.readers() as session:
        locking = select(OrganizationRow).where(OrganizationRow.id == "org_1").with_for_update()
        with pytest.raises(ReadOnlyTransaction, match="locking read"):
            await session.execute(locking)
        await session.rollback()
        await begin_write(session)
        assert (await session.scalars(locking)).one().id == "org_1"
        await session.rollback()


async def test_a_write_from_a_reader_session_is_one_transaction(database: Database) -> None:
    """A reader that calls ``begin_write`` gets a real transaction: rolled back, nothing stays."""
    async with database.readers() as session:
        assert await session.scalar(select(func.count()).select_from(OrganizationRow)) == 5
        await session.rollback()
        await begin_write(session)
        session.add(OrganizationRow(id="org_new", name="new", runtime_config={}))
        await session.flush()
        await session.execute(text("UPDATE organizations SET name = 'renamed'"))
        await session.rollback()
    async with database.readers() as session:
        names = set(await session.scalars(select(OrganizationRow.name)))
    assert names == {f"org {n}" for n in range(5)}


async def _clock_twice(database: Database, *, reader: bool) -> tuple[Any, Any]:
    factory = database.readers if reader else database.sessionmaker
    async with factory() as session:
        first = await session.scalar(text("SELECT now()"))
        await asyncio.sleep(0.05)
        second = await session.scalar(text("SELECT now()"))
        await session.rollback()
    return first, second


@pytest.mark.postgres
async def test_postgresql_reads_run_outside_a_transaction(tmp_path: Path) -> None:
    """``now()`` is the transaction's start: constant in a writer, per statement in a reader."""
    async with throwaway_database("postgresql", tmp_path) as url:
        database = create_database(url)
        try:
            first, second = await _clock_twice(database, reader=True)
            assert second > first  # no BEGIN: every statement is its own transaction
            first, second = await _clock_twice(database, reader=False)
            assert second == first
        finally:
            await database.dispose()


async def _terminate_connections(database_name: str) -> int:
    admin = await _postgres_admin()
    try:
        rows = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            database_name,
        )
    finally:
        await admin.close()
    return len(rows)


async def _select_one(database: Database) -> Any:
    async with database.readers() as session:
        return await session.scalar(text("SELECT 1"))


@pytest.mark.postgres
async def test_an_idle_connection_is_pinged_and_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection the server dropped while it sat idle never fails a request."""
    async with throwaway_database("postgresql", tmp_path) as url:
        database = create_database(url)
        try:
            assert await _select_one(database) == 1
            assert await _terminate_connections(url.rsplit("/", 1)[1]) >= 1
            monkeypatch.setattr(engine_module, "PING_IDLE_SECONDS", 0.0)
            assert await _select_one(database) == 1
        finally:
            await database.dispose()


@pytest.mark.postgres
async def test_a_connection_in_use_a_moment_ago_is_not_pinged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ping on a connection returned just now: if it died since, one request fails as
    "database unavailable" (answered 503) and the pool replaces the connection."""
    async with throwaway_database("postgresql", tmp_path) as url:
        database = create_database(url)
        try:
            monkeypatch.setattr(engine_module, "PING_IDLE_SECONDS", 3600.0)
            assert await _select_one(database) == 1
            assert await _terminate_connections(url.rsplit("/", 1)[1]) >= 1
            with pytest.raises(DBAPIError) as failed:
                await _select_one(database)
            assert database_unavailable(failed.value) == "connection"
            assert await _select_one(database) == 1
        finally:
            await database.dispose()


async def _held_together(database: Database, together: asyncio.Barrier) -> Any:
    """One read that keeps its connection until every request of the burst holds one."""
    async with database.readers() as session:
        value = await session.scalar(text("SELECT 1"))
        await together.wait()
        return value


@pytest.mark.postgres
async def test_connections_opened_under_load_are_kept_for_the_next_burst(tmp_path: Path) -> None:
    """Three requests at once need three connections; the next three at once reuse them.

    QueuePool's overflow would close the two beyond ``pool_size`` as they came back and open
    two new ones for the next burst: a server backend, a login and every prepared statement
    again, several times a second under a steady load.
    """
    async with throwaway_database("postgresql", tmp_path) as url:
        database = create_database(url, pool_size=1, max_overflow=2)
        pool: Any = database.engine.sync_engine.pool
        opened: list[object] = []
        event.listen(database.engine.sync_engine, "connect", lambda conn, _: opened.append(conn))
        try:
            for _ in range(3):
                together = asyncio.Barrier(3)
                burst = [_held_together(database, together) for _ in range(3)]
                assert await asyncio.gather(*burst) == [1, 1, 1]
            assert len(opened) == 3
            assert pool.checkedin() == 3
        finally:
            await database.dispose()
