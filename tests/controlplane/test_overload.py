"""A database out of reach answers 503 with Retry-After, changes nothing, and recovers.

Three ways a healthy request can meet a database it cannot use: every pooled connection is in
use past the pool timeout, SQLite's write lock stays held past the busy timeout, or a
connection is lost. None of them says anything about the request, so none may be a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from controlplane.db import engine as engine_module
from controlplane.db.engine import READ_ONLY
from controlplane.db.models import ProjectRow
from controlplane.errors import DATABASE_RETRY_AFTER_SECONDS, database_unavailable
from controlplane.settings import Settings
from tests.backends import throwaway_database
from tests.conftest import BACKENDS, GENEROUS_RATE_LIMITS, Stack, running_stack
from tests.controlplane.test_errors import assert_problem

pytestmark = pytest.mark.anyio


@pytest.fixture(params=BACKENDS)
async def small_pool(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stack]:
    """A control plane with a single pooled connection and a short pool timeout."""
    backend: str = request.param
    async with throwaway_database(backend, tmp_path) as url:
        settings = Settings(
            data_dir=tmp_path,
            database_url=url,
            auto_migrate=True,
            heartbeat_flush_seconds=60,
            database_pool_size=1,
            database_pool_overflow=0,
            database_pool_timeout_seconds=0.3,
            **GENEROUS_RATE_LIMITS,
        )
        async with running_stack(settings, backend) as stack:
            yield stack


@contextlib.asynccontextmanager
async def held_pools(stack: Stack) -> AsyncIterator[None]:
    """Check out every connection the app could use (on SQLite: the writer's and the reader's)."""
    engines = {id(e): e for e in (stack.database.engine, stack.database.reader_engine)}
    async with contextlib.AsyncExitStack() as held:
        for engine in engines.values():
            reading = engine.execution_options(**{READ_ONLY: True})  # no lock, just the slot
            connection = await held.enter_async_context(reading.connect())
            await connection.execute(text("SELECT 1"))
        yield


def assert_database_unavailable(response: object) -> None:
    body = assert_problem(response, 503)
    assert body["type"] == "urn:byteor:problem:database-unavailable"
    assert "nothing was changed" in str(body["detail"])
    headers = getattr(response, "headers", {})
    assert headers["retry-after"] == str(DATABASE_RETRY_AFTER_SECONDS)


async def test_an_exhausted_pool_is_a_503_and_the_next_request_succeeds(
    small_pool: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    stack = small_pool
    tree = await stack.tree()
    async with held_pools(stack):
        with caplog.at_level(logging.WARNING, logger="byteor.controlplane"):
            read = await stack.call("GET", f"{tree.org_path}/projects", tree.owner)
            write = await stack.call(
                "POST", f"{tree.org_path}/projects", tree.owner, json={"name": "queued"}
            )
    assert_database_unavailable(read)
    assert_database_unavailable(write)
    assert await stack.count(ProjectRow, ProjectRow.name == "queued") == 0
    # Logged once per refusal as a warning, without a traceback or the caller's token.
    refusals = [r for r in caplog.records if "database unavailable" in r.getMessage()]
    assert len(refusals) == 2
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in refusals)
    assert tree.owner.token not in caplog.text
    # With the connection back in the pool the same calls work.
    assert (await stack.call("GET", f"{tree.org_path}/projects", tree.owner)).status_code == 200
    await stack.ok("POST", f"{tree.org_path}/projects", tree.owner, json={"name": "queued"})
    assert await stack.count(ProjectRow, ProjectRow.name == "queued") == 1


async def test_an_agent_heartbeat_on_an_exhausted_pool_is_a_503(small_pool: Stack) -> None:
    """The agent treats 503 as transient and honours Retry-After; a 500 it would log as a bug."""
    stack = small_pool
    tree = await stack.tree()
    token = await stack.ok("POST", f"{tree.env_path}/enrollment-tokens", tree.owner, json={})
    enrolled = await stack.ok(
        "POST",
        f"{tree.env_path}/agents",
        headers={"Authorization": f"Bearer {token['token']}"},
        json={"hostname": "db-busy"},
    )
    agent = {"Authorization": f"Bearer {enrolled['api_key']}"}
    async with held_pools(stack):
        # A new key is not cached yet, so authenticating it needs the database.
        response = await stack.client.post(
            f"/api/v1/agents/{enrolled['agent_id']}/heartbeat", headers=agent, json={}
        )
    assert_database_unavailable(response)


async def test_sqlite_write_lock_held_past_the_busy_timeout_is_a_503(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", 200)
    settings = Settings(
        data_dir=tmp_path,
        auto_migrate=True,
        heartbeat_flush_seconds=60,
        **GENEROUS_RATE_LIMITS,
    )
    async with running_stack(settings, "sqlite") as stack:
        tree = await stack.tree()
        # Another process holds the write lock (a long migration, a backup, a stuck writer).
        other = sqlite3.connect(tmp_path / "byteor.db", isolation_level=None, timeout=5)
        try:
            other.execute("BEGIN IMMEDIATE")
            write = await stack.call(
                "POST", f"{tree.org_path}/projects", tree.owner, json={"name": "blocked"}
            )
            # Readers never wait for the writer under WAL.
            read = await stack.call("GET", f"{tree.org_path}/projects", tree.owner)
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert_database_unavailable(write)
        assert read.status_code == 200, read.text
        assert await stack.count(ProjectRow, ProjectRow.name == "blocked") == 0
        await stack.ok("POST", f"{tree.org_path}/projects", tree.owner, json={"name": "blocked"})


async def test_sqlite_writers_queue_for_one_connection_and_readers_are_never_starved(
    tmp_path: Path,
) -> None:
    """Writers wait for the one writer connection in process, holding nothing; reads go on."""
    settings = Settings(
        data_dir=tmp_path,
        auto_migrate=True,
        heartbeat_flush_seconds=60,
        database_pool_size=2,
        database_pool_overflow=0,
        database_pool_timeout_seconds=5,
        **GENEROUS_RATE_LIMITS,
    )
    async with running_stack(settings, "sqlite") as stack:
        tree = await stack.tree()
        writer = stack.database.engine
        assert writer is not stack.database.reader_engine
        assert writer.pool.size() == 1  # type: ignore[attr-defined]
        held = await writer.connect()
        await held.execute(text("SELECT 1"))
        try:
            writes = [
                asyncio.create_task(
                    stack.call(
                        "POST", f"{tree.org_path}/projects", tree.owner, json={"name": f"p{i}"}
                    )
                )
                for i in range(6)  # more writers than the readers' whole pool
            ]
            await asyncio.sleep(0.3)
            assert not any(task.done() for task in writes)
            for _ in range(5):
                read = await stack.call("GET", f"{tree.org_path}/projects", tree.owner)
                assert read.status_code == 200, read.text
        finally:
            await held.close()
        assert [(await task).status_code for task in writes] == [201] * 6


async def test_the_pool_settings_reach_the_engine(small_pool: Stack) -> None:
    pool = small_pool.database.reader_engine.pool
    assert pool.size() == 1  # type: ignore[attr-defined]
    assert pool.timeout() == pytest.approx(0.3)  # type: ignore[attr-defined]
    held = await _checkout(small_pool.database.reader_engine)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(PoolTimeout):
            await small_pool.database.reader_engine.connect()
        assert asyncio.get_running_loop().time() - started < 5
    finally:
        await held.close()


async def _checkout(engine: AsyncEngine) -> AsyncConnection:
    """The pool's one connection, once the app's background work (the job worker's poll, on
    PostgreSQL the same pool) has given it back."""
    for _ in range(50):
        with contextlib.suppress(PoolTimeout):
            return await engine.connect()
    return await engine.connect()


def test_only_a_database_out_of_reach_counts_as_unavailable() -> None:
    class Orig(Exception):
        pass

    assert database_unavailable(PoolTimeout("QueuePool limit reached")) == "pool"
    locked = OperationalError("INSERT", {}, Orig("database is locked"))
    assert database_unavailable(locked) == "locked"
    lost = OperationalError("SELECT", {}, Orig("connection was closed in the middle of operation"))
    assert database_unavailable(lost) == "connection"
    # A broken statement or a constraint says something about the request or the code: a 500.
    assert database_unavailable(OperationalError("SELECT", {}, Orig("no such table: x"))) is None
    assert database_unavailable(IntegrityError("INSERT", {}, Orig("UNIQUE failed"))) is None
    assert database_unavailable(ValueError("database is locked")) is None
