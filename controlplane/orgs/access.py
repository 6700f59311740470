"""Role checks: the one place that decides whether a caller may act in an organization."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from controlplane.db.models import MembershipRow
from controlplane.errors import Forbidden, NotFound
from shared.roles import Role

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.auth.principal import Principal

__all__ = ["authorize", "role_in"]


async def role_in(session: AsyncSession, caller: Principal, org_id: str) -> Role | None:
    """The caller's role in ``org_id``, or ``None`` if they are not a member."""
    role = await session.scalar(
        select(MembershipRow.role).where(
            MembershipRow.org_id == org_id, MembershipRow.user_id == caller.user_id
        )
    )
    return Role(role) if role is not None else None


async def authorize(session: AsyncSession, caller: Principal, org_id: str, minimum: Role) -> Role:
    """Require at least ``minimum`` in ``org_id``.

    A non-member gets a 404 (the organization's existence is not confirmed); a member whose role is
    too low gets a 403 naming the role needed.
    """
    role = await role_in(session, caller, org_id)
    if role is None:
        raise NotFound(f"No organization {org_id}")
    if not role.at_least(minimum):
        raise Forbidden(f"This needs the {minimum.value} role or higher; you are {role.value}")
    return role
