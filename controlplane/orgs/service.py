"""Organizations: list the caller's, create (creator becomes owner), read, update."""

from __future__ import annotations

from typing import TYPE_CHECKING

from msgspec import UNSET
from sqlalchemy import select

from controlplane.db.models import MembershipRow, OrganizationRow
from controlplane.errors import Forbidden, NotFound
from controlplane.orgs.access import authorize
from controlplane.pagination import fetch_page
from shared.ids import new_id
from shared.resources import Organization, OrganizationCreate, OrganizationUpdate, Page
from shared.roles import Role

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.auth.principal import Principal
    from controlplane.pagination import PageRequest

__all__ = ["create_org", "get_org", "get_org_row", "list_orgs", "org_schema", "update_org"]


def org_schema(row: OrganizationRow) -> Organization:
    return Organization(
        id=row.id,
        name=row.name,
        runtime_config=row.runtime_config,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def get_org_row(session: AsyncSession, org_id: str) -> OrganizationRow:
    row = await session.get(OrganizationRow, org_id)
    if row is None:
        raise NotFound(f"No organization {org_id}")
    return row


async def list_orgs(
    session: AsyncSession, caller: Principal, page: PageRequest
) -> Page[Organization]:
    statement = select(OrganizationRow).join(
        MembershipRow,
        (MembershipRow.org_id == OrganizationRow.id) & (MembershipRow.user_id == caller.user_id),
    )
    rows, cursor = await fetch_page(session, statement, OrganizationRow.id, page)
    return Page(items=[org_schema(r) for r in rows], next_cursor=cursor)


async def create_org(
    session: AsyncSession, caller: Principal, data: OrganizationCreate
) -> Organization:
    """Create an organization with the caller as its owner (people only)."""
    if caller.is_service_account:
        raise Forbidden("Service accounts cannot create organizations")
    row = OrganizationRow(id=new_id("org"), name=data.name, runtime_config=data.runtime_config)
    session.add(row)
    await session.flush()
    session.add(MembershipRow(org_id=row.id, user_id=caller.user_id, role=Role.OWNER.value))
    await session.commit()
    return org_schema(row)


async def get_org(session: AsyncSession, caller: Principal, org_id: str) -> Organization:
    await authorize(session, caller, org_id, Role.VIEWER)
    return org_schema(await get_org_row(session, org_id))


async def update_org(
    session: AsyncSession, caller: Principal, org_id: str, data: OrganizationUpdate
) -> Organization:
    await authorize(session, caller, org_id, Role.ADMIN)
    row = await get_org_row(session, org_id)
    if data.name is not UNSET:
        row.name = data.name
    if data.runtime_config is not UNSET:
        row.runtime_config = data.runtime_config
    await session.commit()
    return org_schema(row)
