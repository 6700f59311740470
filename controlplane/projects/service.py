"""Projects: list, create, read, update, delete (cascading to every descendant row)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from msgspec import UNSET
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from controlplane.db.engine import AGENT_KEYS, FLEET, mark_changed
from controlplane.db.models import ProjectRow
from controlplane.errors import Conflict, NotFound
from controlplane.orgs.access import authorize
from controlplane.pagination import fetch_page
from shared.ids import new_id
from shared.resources import Page, Project, ProjectCreate, ProjectUpdate
from shared.roles import Role

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.auth.principal import Principal
    from controlplane.pagination import PageRequest

__all__ = [
    "create_project",
    "delete_project",
    "get_project",
    "get_project_row",
    "list_projects",
    "update_project",
]


def project_schema(row: ProjectRow) -> Project:
    return Project(
        id=row.id,
        org_id=row.org_id,
        name=row.name,
        description=row.description,
        runtime_config=row.runtime_config,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def get_project_row(session: AsyncSession, org_id: str, project_id: str) -> ProjectRow:
    """The project, which must belong to ``org_id`` (else 404)."""
    row = await session.scalar(
        select(ProjectRow).where(ProjectRow.id == project_id, ProjectRow.org_id == org_id)
    )
    if row is None:
        raise NotFound(f"No project {project_id} in organization {org_id}")
    return row


async def _commit_unique_name(session: AsyncSession, name: str) -> None:
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"A project named {name!r} already exists in this organization") from None


async def _ensure_name_free(
    session: AsyncSession, org_id: str, name: str, except_id: str | None = None
) -> None:
    clash = await session.scalar(
        select(ProjectRow.id).where(ProjectRow.org_id == org_id, ProjectRow.name == name)
    )
    if clash is not None and clash != except_id:
        raise Conflict(f"A project named {name!r} already exists in this organization")


async def list_projects(
    session: AsyncSession, caller: Principal, org_id: str, page: PageRequest
) -> Page[Project]:
    await authorize(session, caller, org_id, Role.VIEWER)
    statement = select(ProjectRow).where(ProjectRow.org_id == org_id)
    rows, cursor = await fetch_page(session, statement, ProjectRow.id, page)
    return Page(items=[project_schema(r) for r in rows], next_cursor=cursor)


async def create_project(
    session: AsyncSession, caller: Principal, org_id: str, data: ProjectCreate
) -> Project:
    await authorize(session, caller, org_id, Role.ADMIN)
    await _ensure_name_free(session, org_id, data.name)
    row = ProjectRow(
        id=new_id("prj"),
        org_id=org_id,
        name=data.name,
        description=data.description,
        runtime_config=data.runtime_config,
    )
    session.add(row)
    await _commit_unique_name(session, data.name)
    return project_schema(row)


async def get_project(
    session: AsyncSession, caller: Principal, org_id: str, project_id: str
) -> Project:
    await authorize(session, caller, org_id, Role.VIEWER)
    return project_schema(await get_project_row(session, org_id, project_id))


async def update_project(
    session: AsyncSession, caller: Principal, org_id: str, project_id: str, data: ProjectUpdate
) -> Project:
    await authorize(session, caller, org_id, Role.ADMIN)
    row = await get_project_row(session, org_id, project_id)
    if data.name is not UNSET and data.name != row.name:
        await _ensure_name_free(session, org_id, data.name, except_id=row.id)
        row.name = data.name
    if data.description is not UNSET:
        row.description = data.description
    if data.runtime_config is not UNSET:
        row.runtime_config = data.runtime_config
    await _commit_unique_name(session, row.name)
    return project_schema(row)


async def delete_project(
    session: AsyncSession, caller: Principal, org_id: str, project_id: str
) -> None:
    """Delete the project; the database cascades to environments and everything under them."""
    await authorize(session, caller, org_id, Role.ADMIN)
    row = await get_project_row(session, org_id, project_id)
    await session.delete(row)
    mark_changed(session, AGENT_KEYS, FLEET)  # cached keys go at once
    await session.commit()
