"""Dependencies every controller shares, provided by parameter name (``session``, ``caller``, ``page``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeAlias

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, QueryParameter
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.auth.principal import AgentPrincipal, Principal
from controlplane.blobs import BlobStore
from controlplane.db.scoped import request_session
from controlplane.jobs import Jobs
from controlplane.orgs.paths import EnvPath
from controlplane.pagination import PageRequest, page_request
from controlplane.settings import Settings
from controlplane.signing.kek import KeyEncryptionKey

__all__ = [
    "Blobs",
    "Caller",
    "DbSession",
    "JobQueue",
    "Kek",
    "Paging",
    "Where",
    "authenticated_agent",
    "dependencies",
    "worker_wake",
]


#: The request's database session (``session: DbSession``).
DbSession: TypeAlias = NamedDependency[AsyncSession]
#: The authenticated principal (``caller: Caller``).
Caller: TypeAlias = NamedDependency[Principal]
#: Validated ``?limit=&cursor=`` (``page: Paging``).
Paging: TypeAlias = NamedDependency[PageRequest]
#: The ``org/project/environment`` a route addresses (``where: Where``).
Where: TypeAlias = NamedDependency[EnvPath]
#: The blob store (``blobs: Blobs``).
Blobs: TypeAlias = NamedDependency[BlobStore]
#: The key-encryption key (``kek: Kek``).
Kek: TypeAlias = NamedDependency[KeyEncryptionKey]
#: Enqueue jobs in the request's transaction; the worker wakes after commit (``jobs: JobQueue``).
JobQueue: TypeAlias = NamedDependency[Jobs]


def provide_session(request: Request[Any, Any, Any]) -> AsyncSession:
    """The request's one session (shared with authentication); services commit, and anything
    uncommitted is rolled back when the authentication middleware closes it after the response.
    """
    return request_session(request.scope, request.app.state.database)


def provide_caller(request: Request[Any, Any, Any]) -> Principal:
    """The authenticated principal (set by the authentication middleware)."""
    user = request.scope.get("user")
    if not isinstance(user, Principal):  # pragma: no cover - middleware guarantees it
        raise TypeError("route has no authenticated principal")
    return user


def authenticated_agent(request: Request[Any, Any, Any]) -> AgentPrincipal:
    """The agent an agent-key route was called by (set by the authentication middleware)."""
    user = request.scope.get("user")
    if not isinstance(user, AgentPrincipal):  # pragma: no cover - middleware guarantees it
        raise TypeError("route has no authenticated agent")
    return user


def provide_page(
    state: State,
    limit: Annotated[int | None, QueryParameter(description="page size (bounded)")] = None,
    cursor: Annotated[
        str | None, QueryParameter(max_length=200, description="next_cursor of the previous page")
    ] = None,
) -> PageRequest:
    settings: Settings = state.settings
    return page_request(
        limit, cursor, default=settings.page_size_default, maximum=settings.page_size_max
    )


def provide_blobs(state: State) -> BlobStore:
    store: BlobStore = state.blobs
    return store


def provide_kek(state: State) -> KeyEncryptionKey:
    kek: KeyEncryptionKey = state.kek
    return kek


def worker_wake(state: State) -> Callable[[], None] | None:
    """How to tell this process's job worker to look for work now (``None``: no worker here)."""
    worker = state.get("worker")
    return worker.notify if worker is not None else None


def provide_jobs(state: State, session: DbSession) -> Jobs:
    """Jobs enqueued on the request's session; this process's worker wakes when it commits."""
    return Jobs(session, worker_wake(state))


def provide_where(
    org_id: FromPath[str], project_id: FromPath[str], env_id: FromPath[str]
) -> EnvPath:
    """The environment path of routes under ``…/environments/{env_id}``."""
    return EnvPath(org_id, project_id, env_id)


dependencies = {
    "where": Provide(provide_where, sync_to_thread=False),
    "blobs": Provide(provide_blobs, sync_to_thread=False),
    "kek": Provide(provide_kek, sync_to_thread=False),
    "session": Provide(provide_session, sync_to_thread=False),
    "caller": Provide(provide_caller, sync_to_thread=False),
    "page": Provide(provide_page, sync_to_thread=False),
    "jobs": Provide(provide_jobs, sync_to_thread=False),
}
