"""Fixtures: the real app on a real database (SQLite, and PostgreSQL when reachable)."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import func, select

from controlplane.app import create_app
from controlplane.auth.service import bootstrap_owner, create_token, find_or_create_user
from controlplane.db import Database
from controlplane.db.models import MembershipRow, OrganizationRow
from controlplane.settings import Settings
from shared.roles import Role
from tests.backends import throwaway_database

#: Budgets no functional test reaches; the rate-limit tests build apps with tiny ones.
GENEROUS_RATE_LIMITS: dict[str, Any] = {
    f"rate_limit_{bucket}": "1000000/minute"
    for bucket in ("bearer", "agent", "artifact_upload", "anonymous", "enrollment")
}

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


#: How much of a one-minute rate-limit window a budget test needs to itself.
WINDOW_MARGIN_SECONDS = 5.0


def within_one_rate_window(margin: float = WINDOW_MARGIN_SECONDS) -> None:
    """Return at least ``margin`` seconds before the next minute boundary (sleeping if need be).

    The sliding window counter weights the previous minute's count by how much of it still
    overlaps and rounds the sum down, so right after a boundary a spent count of ``n`` reads as
    ``n - 1`` and one more request fits (the ``limits`` library's documented approximation).
    Tests that count a tiny per-minute budget down to exactly zero do it inside one fixed window.
    """
    left = 60.0 - time.time() % 60.0
    if left < margin:
        time.sleep(left + 0.05)


@pytest.fixture
def one_rate_window() -> None:
    """The test starts at least ``WINDOW_MARGIN_SECONDS`` inside one minute window."""
    within_one_rate_window()


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def in_process_client(app: Litestar) -> httpx.AsyncClient:
    """An HTTP client that calls ``app`` in-process on the current event loop."""
    transport = httpx.ASGITransport(app=cast("Any", app))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@dataclass(frozen=True)
class Actor:
    """A caller with a bearer token."""

    user_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class Tree:
    """An organization with one project and one environment, and its owner."""

    owner: Actor
    org_id: str
    project_id: str
    env_id: str

    @property
    def org_path(self) -> str:
        return f"/api/v1/orgs/{self.org_id}"

    @property
    def project_path(self) -> str:
        return f"{self.org_path}/projects/{self.project_id}"

    @property
    def env_path(self) -> str:
        return f"{self.project_path}/environments/{self.env_id}"


@dataclass
class Stack:
    """The running app, its HTTP client and its database, plus factories for test data."""

    client: httpx.AsyncClient
    app: Litestar
    database: Database
    backend: str
    settings: Settings
    _counter: list[int] = field(default_factory=lambda: [0])

    def unique(self, stem: str) -> str:
        self._counter[0] += 1
        return f"{stem}-{self._counter[0]}-{secrets.token_hex(3)}"

    async def human(self, email: str | None = None) -> Actor:
        """A person with a bearer token and no memberships (as after sign-in)."""
        async with self.database.sessionmaker() as session:
            user = await find_or_create_user(session, email or f"{self.unique('user')}@example.com")
            await session.commit()
            token = await create_token(session, user.id, "test")
        return Actor(user_id=user.id, token=token.token)

    async def call(
        self, method: str, path: str, actor: Actor | None = None, **kwargs: Any
    ) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if actor is not None:
            headers.update(actor.headers)
        return await self.client.request(method, path, headers=headers, **kwargs)

    async def ok(self, method: str, path: str, actor: Actor | None = None, **kwargs: Any) -> Any:
        response = await self.call(method, path, actor, **kwargs)
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    async def tree(self, owner: Actor | None = None) -> Tree:
        owner = owner or await self.human()
        org = await self.ok("POST", "/api/v1/orgs", owner, json={"name": self.unique("org")})
        project = await self.ok(
            "POST", f"/api/v1/orgs/{org['id']}/projects", owner, json={"name": "payments"}
        )
        env = await self.ok(
            "POST",
            f"/api/v1/orgs/{org['id']}/projects/{project['id']}/environments",
            owner,
            json={"name": "production"},
        )
        return Tree(owner=owner, org_id=org["id"], project_id=project["id"], env_id=env["id"])

    async def member(self, tree: Tree, role: Role) -> Actor:
        """A service account of ``tree``'s organization with ``role``."""
        body = await self.ok(
            "POST",
            f"{tree.org_path}/service-accounts",
            tree.owner,
            json={"name": self.unique(role.value), "role": role.value},
        )
        return Actor(user_id=body["id"], token=body["token"])

    async def count(self, model: type[Any], *where: Any) -> int:
        async with self.database.sessionmaker() as session:
            value = await session.scalar(select(func.count()).select_from(model).where(*where))
        return int(value or 0)

    async def owner_count(self) -> int:
        return await self.count(MembershipRow, MembershipRow.role == Role.OWNER.value)

    async def org_exists(self, org_id: str) -> bool:
        return await self.count(OrganizationRow, OrganizationRow.id == org_id) == 1


@asynccontextmanager
async def running_stack(settings: Settings, backend: str) -> AsyncIterator[Stack]:
    """The real app for ``settings``, started on the current event loop, with its client."""
    app = create_app(settings)
    async with app.lifespan(), in_process_client(app) as client:
        yield Stack(
            client=client,
            app=app,
            database=app.state.database,
            backend=backend,
            settings=settings,
        )


async def owner_of(stack: Stack, email: str) -> Actor:
    """Bootstrap the first owner of ``stack``'s (empty) database, as the CLI does."""
    async with stack.database.sessionmaker() as session:
        boot = await bootstrap_owner(session, email, "tests")
    return Actor(user_id=boot.user_id, token=boot.token)


@pytest.fixture(scope="session", params=BACKENDS)
async def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    backend: str = request.param
    directory: Path = tmp_path_factory.mktemp(f"stack-{backend}")
    async with throwaway_database(backend, directory) as url:
        settings = Settings(
            data_dir=directory,
            database_url=url,
            auto_migrate=True,
            # tests flush coalesced heartbeats explicitly, so the background flush stays out of the way
            heartbeat_flush_seconds=60,
            **GENEROUS_RATE_LIMITS,
        )
        app = create_app(settings)
        # The app's lifespan and every request run on the test's own event loop (asyncpg needs it).
        async with (
            app.lifespan(),
            in_process_client(app) as client,
        ):
            yield Stack(
                client=client,
                app=app,
                database=app.state.database,
                backend=backend,
                settings=settings,
            )


@pytest.fixture
async def tree(stack: Stack) -> Tree:
    return await stack.tree()
