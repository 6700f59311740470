"""One database session per request, opened on first use and closed when the request ends.

Authentication (when a credential is not served from a cache) and the route handler share it.
A route reads in a reader session (no lock on SQLite) when it is ``GET``/``HEAD``/``OPTIONS``,
writes in a writer session otherwise; ``opt={"transaction": "read"}`` or ``"write"`` overrides
that (a heartbeat is a ``POST`` that writes nothing: it is buffered).
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from controlplane.db.engine import begin_read

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from litestar.types import Scope
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.db.engine import Database

__all__ = ["authentication_read", "close_request_session", "request_session", "wants_write"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_KEY = "byteor.session"


def _state(scope: Scope) -> dict[str, Any]:
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


def wants_write(scope: Scope) -> bool:
    """Whether the route's transactions write (see the module docstring)."""
    handler = scope.get("route_handler")
    transaction = handler.opt.get("transaction") if handler is not None else None
    if transaction is not None:
        return bool(transaction == "write")
    return scope.get("method", "GET") not in SAFE_METHODS


def request_session(scope: Scope, database: Database) -> AsyncSession:
    """The request's session, created on first use."""
    state = _state(scope)
    session: AsyncSession | None = state.get(_KEY)
    if session is None:
        factory = database.sessionmaker if wants_write(scope) else database.readers
        session = factory()
        state[_KEY] = session
    return session


@asynccontextmanager
async def authentication_read(scope: Scope, database: Database) -> AsyncIterator[AsyncSession]:
    """The request's session for reading a credential, in a read transaction that ends after.

    Ending it returns the connection to the pool before the handler runs: the handler's own
    transaction (on a writing route, its lock) starts only when it needs it, not while a body
    streams in, and a handler that waits on a shared read (the environment's heartbeat view)
    holds no connection meanwhile, so a burst of requests cannot exhaust the pool.
    """
    session = request_session(scope, database)
    if not session.in_transaction():
        await begin_read(session)  # on SQLite: the readers' pool, never the one writer

    try:
        yield session
    finally:
        await session.rollback()


async def close_request_session(scope: Scope) -> None:
    """Close the request's session, if it opened one (rolling back anything uncommitted)."""
    session: AsyncSession | None = _state(scope).pop(_KEY, None)
    if session is not None:
        await session.close()
