"""The async engine, its two session factories, and local change notices.

SQLite is tuned for durability and correctness: WAL journal, ``synchronous=FULL``, foreign keys
enforced (cascades depend on them) and a busy timeout. Writers begin ``BEGIN IMMEDIATE``, so that
concurrent writers queue on the busy timeout instead of failing with "database is locked" when a
read transaction tries to upgrade to a write. Readers (``Database.readers``) begin a plain deferred
transaction: under WAL they take no lock, never wait for a writer and never make one wait.

On a SQLite file, readers and writers also use two engines (two pools) on the same file. The
writers' pool holds exactly one connection: SQLite admits one writer at a time anyway, so writers
of this process queue for that connection in asyncio, first come first served, holding nothing
else, instead of each holding a pooled connection while SQLite's busy handler sleeps and retries.
Readers then never find the pool taken by writers that wait for the lock. (Writers of other
processes, a worker or the CLI, still meet on the lock: this process waits for it up to 30 s,
in asyncio, see :mod:`controlplane.db.inline`.)

On PostgreSQL, readers run in autocommit: a read sends its statements and nothing else, no
``BEGIN`` and no ``ROLLBACK`` (two round trips, each a turn of a busy event loop while the
connection stays checked out). Under PostgreSQL's ``READ COMMITTED`` every statement sees its own
snapshot either way, and a read takes no lock a transaction would have to keep; a locking read
(``FOR UPDATE``/``FOR SHARE``) is refused in a read transaction like a write. Connections are
pinged before use only when they sat idle in the pool for ``PING_IDLE_SECONDS`` (a restarted server
or a dropped idle connection), not on every checkout: a connection returned a moment ago is alive,
and if it died since, the request fails as "database unavailable" (503, ``Retry-After``) and the
pool replaces it.

A reader session that must write (rarely: the first use of a rotated agent key, a manifest issued
on a deployment check) calls :func:`begin_write` at the start of a fresh transaction; on SQLite it
moves to the writers' engine for that transaction. A write
statement in a read transaction is a programming error and raises :class:`ReadOnlyTransaction`,
on every backend, so tests catch it long before it could become a busy error under load.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from time import monotonic
from typing import TYPE_CHECKING, Any

from sqlalchemy import event, exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session

from controlplane.db import inline

if TYPE_CHECKING:
    from sqlalchemy.orm import SessionTransaction

    from controlplane.settings import Settings

__all__ = [
    "AGENT_KEYS",
    "FLEET",
    "ChangeFeed",
    "Database",
    "ReadOnlyTransaction",
    "begin_read",
    "begin_write",
    "create_database",
    "database_for",
    "ensure_writable",
    "mark_changed",
]

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Change topic: an agent key was revoked, replaced or deleted here.
AGENT_KEYS = "agent_keys"
#: Change topic: what a heartbeat answers changed (desired state, waiting manifests, rotated
#: keys, signing key sets).
FLEET = "fleet"
#: Execution option marking a connection's transaction as read-only.
READ_ONLY = "byteor_read_only"
#: Statements a read transaction may run.
_READ_VERBS = frozenset(
    {
        "BEGIN",
        "SELECT",
        "WITH",
        "PRAGMA",
        "SAVEPOINT",
        "RELEASE",
        "ROLLBACK",
        "COMMIT",
        "SHOW",
        "SET",
    }
)


#: A pooled PostgreSQL connection idle for longer than this is pinged before a request uses it.
PING_IDLE_SECONDS = 5.0
#: Where a connection record keeps when it was last returned to the pool.
_RETURNED_AT = "byteor_returned_at"


class ReadOnlyTransaction(RuntimeError):
    """A write statement ran in a read transaction; call :func:`begin_write` first."""


class ChangeFeed:
    """Counters of local changes by topic, bumped after the committing transaction commits.

    In-process caches compare a topic's counter with the one they saw when they filled an
    entry, so a change made in this process shows at once; changes made by other processes
    show when the entry's time-to-live runs out.
    """

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def version(self, topic: str) -> int:
        return self._counts[topic]

    def bump(self, *topics: str) -> None:
        for topic in topics:
            self._counts[topic] += 1


@dataclass(frozen=True, slots=True)
class Database:
    """An engine, its writer and reader session factories, and the local change feed."""

    #: The engine writers use (and migrations); on PostgreSQL the only one.
    engine: AsyncEngine
    #: Sessions whose transactions may write (``BEGIN IMMEDIATE`` on SQLite).
    sessionmaker: async_sessionmaker[AsyncSession]
    #: Sessions whose transactions only read (deferred on SQLite: no lock taken).
    readers: async_sessionmaker[AsyncSession]
    changes: ChangeFeed = field(default_factory=ChangeFeed)
    #: The engine readers use: on a SQLite file its own pool, else the same as ``engine``.
    read_engine: AsyncEngine | None = None
    #: Read sessions for this process's background sweeps (the agent-key revalidation),
    #: on an engine of their own with one connection, so that a sweep never queues behind the
    #: requests it serves: when requests hold every pooled connection, the sweep that keeps
    #: their cached answers fresh must still run. ``None`` (a private in-memory SQLite
    #: database, where one engine is all there is): sweeps use ``readers``.
    sweepers: async_sessionmaker[AsyncSession] | None = None
    #: The engine under ``sweepers``.
    sweep_engine: AsyncEngine | None = None

    @property
    def background(self) -> async_sessionmaker[AsyncSession]:
        """Read sessions for background sweeps: ``sweepers`` when there is one, else ``readers``."""
        return self.sweepers or self.readers

    @property
    def reader_engine(self) -> AsyncEngine:
        return self.read_engine or self.engine

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
        if self.read_engine is not None:
            await self.read_engine.dispose()
        if self.sweep_engine is not None:
            await self.sweep_engine.dispose()


#: ``Session.info`` keys, set when readers and writers have engines of their own: the engine a
#: session moves to for a write transaction, for a read, and the one it returns to after each.
_WRITE_BIND = "byteor_write_bind"
_READ_BIND = "byteor_read_bind"
_HOME_BIND = "byteor_home_bind"


class RoutedSession(Session):
    """A session that returns to its own engine after a transaction it ran on the other one."""


@event.listens_for(RoutedSession, "after_transaction_end")
def _return_home(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is not None:
        return  # a savepoint: the transaction goes on
    home = session.info.get(_HOME_BIND)
    if home is not None and session.bind is not home:
        session.bind = home


def _tune_sqlite(engine: AsyncEngine, *, busy_timeout_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below own transaction boundaries.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def _guard_reads(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "before_cursor_execute")
    def _before_execute(
        connection: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool
    ) -> None:
        if not connection.get_execution_options().get(READ_ONLY):
            return
        verb = statement.lstrip().split(None, 1)[0].upper() if statement.strip() else ""
        if verb not in _READ_VERBS:
            raise ReadOnlyTransaction(
                f"{verb} in a read transaction: call begin_write(session) before writing"
            )
        # The statement's own lock clause, not its SQL: SQLite renders no FOR UPDATE, and the
        # tests on SQLite must catch a locking read in a read session all the same.
        compiled = getattr(context, "compiled", None)
        construct = getattr(compiled, "statement", None)
        if getattr(construct, "_for_update_arg", None) is not None:
            raise ReadOnlyTransaction(
                "a locking read in a read transaction: call begin_write(session) before locking"
            )


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Ping a pooled connection before use when it was idle for ``PING_IDLE_SECONDS``.

    SQLAlchemy's ``pool_pre_ping`` pings on every checkout: one more round trip per request.
    A failed ping of an idle connection raises ``InvalidatePoolError``, on which the pool
    discards every pooled connection (as ``pool_pre_ping`` does) and opens a fresh one.
    """
    sync_engine = engine.sync_engine
    dialect = sync_engine.dialect

    @event.listens_for(sync_engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info[_RETURNED_AT] = monotonic()

    @event.listens_for(sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned_at = record.info.get(_RETURNED_AT)
        if returned_at is None or monotonic() - returned_at < PING_IDLE_SECONDS:
            return  # opened just now, or in use a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                # As pool_pre_ping does: the server restarted, so every pooled connection is gone.
                raise exc.InvalidatePoolError(f"idle connection lost: {error}") from error
            raise


async def _begin(session: AsyncSession, *, read_only: bool) -> None:
    """Start the session's next transaction as a read or a write, on that side's engine."""
    if session.in_transaction():
        kind = "begin_read" if read_only else "begin_write"
        raise RuntimeError(f"{kind} needs a session with no transaction open")
    bind = session.info.get(_READ_BIND if read_only else _WRITE_BIND)
    if bind is not None:
        session.sync_session.bind = bind
    await session.connection(execution_options={READ_ONLY: read_only})


async def begin_write(session: AsyncSession) -> None:
    """Start the session's next transaction as a writer (``BEGIN IMMEDIATE`` on SQLite).

    Call it with no transaction open (after a commit or rollback, or before the first
    statement); a session from ``Database.sessionmaker`` is a writer already.
    """
    await _begin(session, read_only=False)


async def begin_read(session: AsyncSession) -> None:
    """Start the session's next transaction as a read (no lock), on the readers' engine.

    For a writer session that reads before it writes (a credential check): the read takes no
    writer connection. When the transaction ends the session is a writer again. Call it with no
    transaction open.
    """
    await _begin(session, read_only=True)


async def ensure_writable(session: AsyncSession) -> None:
    """Make sure the session's current transaction may write.

    A read transaction ends (rolled back: loaded rows expire, so keep plain values) and a write
    transaction begins; a write transaction goes on as it is.
    """
    if session.in_transaction():
        connection = (await session.connection()).sync_connection
        if connection is None or not connection.get_execution_options().get(READ_ONLY):
            return
        await session.rollback()
    await begin_write(session)


def mark_changed(session: AsyncSession, *topics: str) -> None:
    """Bump ``topics`` on the local change feed once the session's transaction commits."""
    feed = session.info.get("changes")
    if not isinstance(feed, ChangeFeed):
        return
    pending: set[str] = session.info.setdefault("changed_topics", set())
    if not pending:

        def after_commit(sync_session: Session) -> None:
            feed.bump(*sync_session.info.pop("changed_topics", ()))

        event.listen(session.sync_session, "after_commit", after_commit, once=True)
    pending.update(topics)


def create_database(
    url: str,
    *,
    echo: bool = False,
    pool_size: int = 5,
    max_overflow: int = 10,
    pool_timeout: float = 10.0,
) -> Database:
    """Create the engine for ``url`` (creating the SQLite file's directory if needed).

    The pool holds ``pool_size`` connections plus up to ``max_overflow`` more under load (on
    PostgreSQL those stay open once opened, rather than being closed and reopened); a
    request that finds none free within ``pool_timeout`` seconds fails with SQLAlchemy's
    ``TimeoutError``, which the API answers as a 503 with ``Retry-After``. Statement
    parameters are kept out of error messages (they may hold token digests).
    """
    parsed = make_url(url)
    autocommit = False  # whether reads run in autocommit (PostgreSQL)
    kwargs: dict[str, Any] = {"echo": echo, "hide_parameters": True}
    read_engine: AsyncEngine | None = None
    sweep_engine: AsyncEngine | None = None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database not in (None, "", ":memory:"):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            # Every connection runs inline, on the event loop's thread, and waits for a lock in
            # asyncio (see controlplane.db.inline: a thread hop per statement costs more than
            # the statement, and held the one writer connection for seconds under load).
            busy_ms = SQLITE_BUSY_TIMEOUT_MS
            # One writer connection: writers queue for it here, not in SQLite's busy handler.
            engine = create_async_engine(
                url,
                **kwargs,
                async_creator=inline.connect(parsed.database, busy_timeout_ms=busy_ms),
                pool_size=1,
                max_overflow=0,
                pool_timeout=pool_timeout,
            )
            # Readers keep their connections open: opening one per request under load costs
            # more than the query.
            read_engine = create_async_engine(
                url,
                **kwargs,
                async_creator=inline.connect(parsed.database, busy_timeout_ms=busy_ms),
                pool_size=pool_size + max_overflow,
                max_overflow=0,
                pool_timeout=pool_timeout,
            )
            _tune_sqlite(read_engine, busy_timeout_ms=0)
            _guard_reads(read_engine)
            sweep_engine = create_async_engine(
                url,
                **kwargs,
                async_creator=inline.connect(parsed.database, busy_timeout_ms=busy_ms),
                pool_size=1,
                max_overflow=0,
                pool_timeout=pool_timeout,
            )
            _tune_sqlite(sweep_engine, busy_timeout_ms=0)
            _tune_sqlite(engine, busy_timeout_ms=0)
        else:
            engine = create_async_engine(url, **kwargs)  # one private database: one engine
            _tune_sqlite(engine, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS)
    else:
        # Overflow connections are kept too, opened on demand as before: QueuePool closes one
        # whenever it comes back to a full pool, and under a steady load that was a new
        # connection several times a second (992 in one 10,000-agent run, against 15 in use),
        # each a new server backend, a login and every prepared statement prepared again.
        engine = create_async_engine(
            url,
            **kwargs,
            pool_size=pool_size + max_overflow,
            max_overflow=0,
            pool_timeout=pool_timeout,
        )
        sweep_engine = create_async_engine(
            url,
            **kwargs,
            pool_size=1,
            max_overflow=0,
            pool_timeout=pool_timeout,
        )
        _ping_when_idle(engine)
        _ping_when_idle(sweep_engine)
        autocommit = True
    _guard_reads(engine)
    read_options: dict[str, Any] = {READ_ONLY: True}
    if autocommit:
        read_options["isolation_level"] = "AUTOCOMMIT"
    sweepers: async_sessionmaker[AsyncSession] | None = None
    if sweep_engine is not None:
        _guard_reads(sweep_engine)
        sweepers = async_sessionmaker(
            sweep_engine.execution_options(**read_options),
            expire_on_commit=False,
            autoflush=False,
        )
    changes = ChangeFeed()
    writer_info: dict[str, Any] = {"changes": changes}
    reader_info: dict[str, Any] = {"changes": changes}
    reading = (read_engine or engine).execution_options(**read_options)
    if read_engine is not None or autocommit:
        writer_info.update({_READ_BIND: reading.sync_engine, _HOME_BIND: engine.sync_engine})
        reader_info.update({_WRITE_BIND: engine.sync_engine, _HOME_BIND: reading.sync_engine})
    return Database(
        engine=engine,
        sessionmaker=async_sessionmaker(
            engine,
            expire_on_commit=False,
            autoflush=False,
            info=writer_info,
            sync_session_class=RoutedSession,
        ),
        readers=async_sessionmaker(
            reading,
            expire_on_commit=False,
            autoflush=False,
            info=reader_info,
            sync_session_class=RoutedSession,
        ),
        changes=changes,
        read_engine=read_engine,
        sweepers=sweepers,
        sweep_engine=sweep_engine,
    )


def database_for(settings: Settings) -> Database:
    """The database ``settings`` name, with the pool they configure."""
    return create_database(
        settings.resolved_database_url,
        pool_size=settings.database_pool_size,
        max_overflow=settings.database_pool_overflow,
        pool_timeout=settings.database_pool_timeout_seconds,
    )
