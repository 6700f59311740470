"""SQLite connections for read transactions, run on the event loop's own thread.

SQLAlchemy's ``aiosqlite`` dialect runs every statement on a thread per connection, and each
statement is a round trip: the statement goes to the thread, the result comes back through the
event loop. Under load that round trip costs far more than the statement. The thread must win
the GIL back from a busy event loop several times per statement (each time up to the
interpreter's switch interval, 5 ms), and the result waits its turn in the loop's queue behind
every request ready to run. Measured on a 2-core machine, one indexed ``SELECT`` in a read
session: about 1 ms while the loop idles; 200 ms while the loop runs 2 ms slices of other
work, with one session at a time. Connections are held that long, so the pool runs dry while
the CPU sits half idle.

A read transaction on a SQLite file in WAL mode never waits for a lock: it reads a snapshot,
whatever writers do. So it loses nothing by running inline, on the loop's thread, and the round
trips are gone: a statement costs what SQLite takes to run it. These connections are for the
readers' engine only (see :mod:`controlplane.db.engine`). Writers keep ``aiosqlite``: a write
may wait for the lock (another process writes) and its commit waits for ``fsync``, and neither
may stall the loop.

The classes quack like the parts of ``aiosqlite.Connection`` and ``aiosqlite.Cursor`` that
SQLAlchemy's adapter uses; the engine gets them through ``create_async_engine(async_creator=)``.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable, Iterable, Sequence

__all__ = ["InlineConnection", "InlineCursor", "connect"]

#: How long an inline read may wait for a lock before it fails (``PRAGMA busy_timeout``).
#: A WAL reader takes none in normal operation; SQLite makes one wait only in rare moments
#: (recovering the WAL index after a crash), and the wait would stall the event loop.
INLINE_BUSY_TIMEOUT_MS = 250


class InlineCursor:
    """An ``aiosqlite.Cursor`` look-alike whose coroutines finish without suspending."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Any = ()) -> Self:
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> Self:
        self._cursor.executemany(sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        if size is None:
            return self._cursor.fetchmany()
        return self._cursor.fetchmany(size)

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class _Immediate:
    """Stands in for aiosqlite's request queue: runs the function at once."""

    __slots__ = ("_connection",)

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def put_nowait(self, item: tuple[asyncio.Future[Any], Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except Exception as error:  # noqa: BLE001 - handed to the awaiting caller, as aiosqlite does
            future.set_exception(error)
        else:
            future.set_result(result)


class InlineConnection:
    """An ``aiosqlite.Connection`` look-alike over a ``sqlite3`` connection on this thread."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn = connection
        self._tx = _Immediate(connection)

    @property
    def _connection(self) -> sqlite3.Connection | None:
        # SQLAlchemy's adapter checks it before commit and rollback, as aiosqlite's own.
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> InlineCursor:
        cursor = self.cursor()
        await cursor.execute(sql, parameters)
        return cursor

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        self._conn.close()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    def stop(self) -> None:
        self._conn.close()


def connect(database: str) -> Callable[[], Any]:
    """An ``async_creator`` for ``create_async_engine``: inline connections to ``database``."""

    async def creator() -> InlineConnection:
        # Used on the loop's thread only; closed from another one at most when the garbage
        # collector finalizes a connection nobody returned (SQLAlchemy terminates it).
        connection = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        return InlineConnection(connection)

    return creator
