"""SQLite connections run on the event loop's own thread, for readers and the writer alike.

SQLAlchemy's ``aiosqlite`` dialect runs every statement on a thread per connection, and each
statement is a round trip: the statement goes to the thread, the result comes back through the
event loop. Under load that round trip costs far more than the statement. The thread must win
the GIL back from a busy event loop several times per statement (each time up to the
interpreter's switch interval, 5 ms), and the result waits its turn in the loop's queue behind
every request ready to run. Measured on a 2-core machine, one indexed ``SELECT`` in a read
session: about 1 ms while the loop idles; 200 ms while the loop runs 2 ms slices of other
work, with one session at a time. Connections are held that long: the readers' pool runs dry,
and the one writer connection (see :mod:`controlplane.db.engine`) is held for seconds by a
transaction of a few dozen statements, while every other writer queues behind it and the CPU
sits half idle.

So statements run inline, on the loop's thread, and cost what SQLite takes to run them. What
could stall the loop is handled so that it cannot:

* **Lock waits.** A WAL reader never waits for a lock in normal operation; a writer waits when
  another process (a worker, the CLI, a backup) holds the write lock. SQLite's own busy handler
  would sleep on the loop's thread, so these connections have ``busy_timeout=0`` and a
  statement SQLite answers ``SQLITE_BUSY`` is retried here after an ``asyncio.sleep`` (1 ms
  doubling to 50 ms) until the connection's wait bound runs out; then the ``database is
  locked`` error goes to the caller as before (the API answers 503). ``SQLITE_BUSY_SNAPSHOT``
  (a read transaction that may no longer write) is not retried: only a new transaction helps.
* **``fsync``.** A commit under ``synchronous=FULL`` syncs the WAL on the loop's thread. On
  the machines measured that is 0.2 ms; a commit carries a whole batch (heartbeats, reports),
  so there are few per second.

The classes quack like the parts of ``aiosqlite.Connection`` and ``aiosqlite.Cursor`` that
SQLAlchemy's adapter uses; the engine gets them through ``create_async_engine(async_creator=)``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = ["InlineConnection", "InlineCursor", "connect"]

#: The first and the longest pause between two attempts of a statement SQLite found busy.
_FIRST_PAUSE = 0.001
_LONGEST_PAUSE = 0.05
#: ``SQLITE_BUSY_SNAPSHOT``: a read transaction tried to write after another writer committed.
_BUSY_SNAPSHOT = 517


def _busy(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused the statement for a lock another connection holds, for now."""
    code: int | None = getattr(error, "sqlite_errorcode", None)
    if code is None:  # pragma: no cover - Python before 3.11 has no error codes
        return "database is locked" in str(error)
    return code & 0xFF == sqlite3.SQLITE_BUSY and code != _BUSY_SNAPSHOT


async def _patiently(call: Callable[[], Any], wait_seconds: float) -> Any:
    """``call()``, retried while SQLite answers busy, pausing in asyncio, for ``wait_seconds``."""
    try:
        return call()
    except sqlite3.OperationalError as error:
        if not _busy(error) or wait_seconds <= 0:
            raise
    loop = asyncio.get_running_loop()
    give_up = loop.time() + wait_seconds
    pause = _FIRST_PAUSE
    while True:
        await asyncio.sleep(min(pause, max(0.0, give_up - loop.time())))
        try:
            return call()
        except sqlite3.OperationalError as error:
            if not _busy(error) or loop.time() >= give_up:
                raise
        pause = min(pause * 2, _LONGEST_PAUSE)


class InlineCursor:
    """An ``aiosqlite.Cursor`` look-alike whose coroutines finish without suspending."""

    __slots__ = ("_cursor", "_wait")

    def __init__(self, cursor: sqlite3.Cursor, wait_seconds: float) -> None:
        self._cursor = cursor
        self._wait = wait_seconds

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Any = ()) -> Self:
        await _patiently(lambda: self._cursor.execute(sql, parameters), self._wait)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Any]) -> Self:
        rows = list(parameters)  # retried whole: an iterator would be spent by the first try
        await _patiently(lambda: self._cursor.executemany(sql, rows), self._wait)
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

    def __init__(self, connection: sqlite3.Connection, wait_seconds: float) -> None:
        self._conn = connection
        self._tx = _Immediate(connection)
        self._wait = wait_seconds

    @property
    def _connection(self) -> sqlite3.Connection | None:
        # SQLAlchemy's adapter checks it before commit and rollback, as aiosqlite's own.
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor(), self._wait)

    async def execute(self, sql: str, parameters: Sequence[Any] = ()) -> InlineCursor:
        cursor = self.cursor()
        await cursor.execute(sql, parameters)
        return cursor

    async def commit(self) -> None:
        await _patiently(self._conn.commit, self._wait)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        self._conn.close()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    def stop(self) -> None:
        self._conn.close()


def connect(database: str, *, busy_timeout_ms: int) -> Callable[[], Any]:
    """An ``async_creator`` for ``create_async_engine``: inline connections to ``database``.

    A statement that finds the database locked is retried for up to ``busy_timeout_ms``,
    pausing in asyncio; SQLite's own busy handler is off (``busy_timeout=0``, which the engine's
    ``connect`` hook must keep).
    """
    wait_seconds = busy_timeout_ms / 1000

    async def creator() -> InlineConnection:
        # Used on the loop's thread only; closed from another one at most when the garbage
        # collector finalizes a connection nobody returned (SQLAlchemy terminates it).
        connection = sqlite3.connect(
            database, isolation_level=None, check_same_thread=False, timeout=0
        )
        return InlineConnection(connection, wait_seconds)

    return creator
