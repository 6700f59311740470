"""Members and service accounts of an organization, with the owner rules.

Only an owner may grant the owner role or change or remove an owner; nobody may grant a role above
their own; the last owner can be neither demoted nor removed (409).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import delete, func, select

from controlplane.auth.service import create_token, find_or_create_user, list_tokens, revoke_token
from controlplane.db.models import MembershipRow, UserRow
from controlplane.errors import Conflict, Forbidden, NotFound
from controlplane.orgs.access import authorize
from controlplane.pagination import fetch_page
from shared.ids import new_id
from shared.resources import (
    ApiToken,
    ApiTokenCreate,
    ApiTokenCreated,
    Member,
    MemberCreate,
    Page,
    ServiceAccount,
    ServiceAccountCreate,
    ServiceAccountCreated,
)
from shared.roles import PrincipalKind, Role

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.auth.principal import Principal
    from controlplane.pagination import PageRequest

__all__ = [
    "add_member",
    "create_service_account",
    "create_service_account_token",
    "delete_service_account",
    "list_members",
    "list_service_account_tokens",
    "list_service_accounts",
    "remove_member",
    "revoke_service_account_token",
    "update_member",
]


def _member_schema(membership: MembershipRow, user: UserRow) -> Member:
    return Member(
        user_id=user.id,
        org_id=membership.org_id,
        kind=PrincipalKind(user.kind),
        name=user.name,
        email=user.email,
        role=Role(membership.role),
        created_at=membership.created_at,
    )


def _check_grant(caller_role: Role, granted: Role) -> None:
    if granted is Role.OWNER and caller_role is not Role.OWNER:
        raise Forbidden("Only an owner can grant the owner role")
    if not caller_role.at_least(granted):
        raise Forbidden(f"You cannot grant {granted.value}, which is above your own role")


async def _membership(
    session: AsyncSession, org_id: str, user_id: str
) -> tuple[MembershipRow, UserRow]:
    row = (
        await session.execute(
            select(MembershipRow, UserRow)
            .join(UserRow, UserRow.id == MembershipRow.user_id)
            .where(MembershipRow.org_id == org_id, MembershipRow.user_id == user_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"No member {user_id} in organization {org_id}")
    return row[0], row[1]


async def _ensure_other_owner(session: AsyncSession, org_id: str, user_id: str) -> None:
    owners = await session.scalar(
        select(func.count())
        .select_from(MembershipRow)
        .where(
            MembershipRow.org_id == org_id,
            MembershipRow.role == Role.OWNER.value,
            MembershipRow.user_id != user_id,
        )
    )
    if not owners:
        raise Conflict("An organization must keep at least one owner")


async def list_members(
    session: AsyncSession, caller: Principal, org_id: str, page: PageRequest
) -> Page[Member]:
    await authorize(session, caller, org_id, Role.VIEWER)
    statement = (
        select(MembershipRow)
        .join(UserRow, UserRow.id == MembershipRow.user_id)
        .where(MembershipRow.org_id == org_id)
    )
    memberships, cursor = await fetch_page(session, statement, MembershipRow.user_id, page)
    users = {
        u.id: u
        for u in await session.scalars(
            select(UserRow).where(UserRow.id.in_([m.user_id for m in memberships]))
        )
    }
    return Page(
        items=[_member_schema(m, users[m.user_id]) for m in memberships], next_cursor=cursor
    )


async def add_member(
    session: AsyncSession, caller: Principal, org_id: str, data: MemberCreate
) -> Member:
    caller_role = await authorize(session, caller, org_id, Role.ADMIN)
    _check_grant(caller_role, data.role)
    user = await find_or_create_user(session, data.email)
    existing = await session.get(MembershipRow, (org_id, user.id))
    if existing is not None:
        raise Conflict(f"{data.email} is already a member of this organization")
    membership = MembershipRow(org_id=org_id, user_id=user.id, role=data.role.value)
    session.add(membership)
    await session.commit()
    return _member_schema(membership, user)


async def update_member(
    session: AsyncSession, caller: Principal, org_id: str, user_id: str, role: Role
) -> Member:
    caller_role = await authorize(session, caller, org_id, Role.ADMIN)
    membership, user = await _membership(session, org_id, user_id)
    current = Role(membership.role)
    if current is Role.OWNER and caller_role is not Role.OWNER:
        raise Forbidden("Only an owner can change an owner's role")
    _check_grant(caller_role, role)
    if current is Role.OWNER and role is not Role.OWNER:
        await _ensure_other_owner(session, org_id, user_id)
    membership.role = role.value
    await session.commit()
    return _member_schema(membership, user)


async def remove_member(
    session: AsyncSession, caller: Principal, org_id: str, user_id: str
) -> None:
    """Remove a member; removing a service account deletes it and its tokens."""
    caller_role = await authorize(session, caller, org_id, Role.ADMIN)
    membership, user = await _membership(session, org_id, user_id)
    if Role(membership.role) is Role.OWNER:
        if caller_role is not Role.OWNER:
            raise Forbidden("Only an owner can remove an owner")
        await _ensure_other_owner(session, org_id, user_id)
    if user.kind == PrincipalKind.SERVICE.value:
        await session.execute(delete(UserRow).where(UserRow.id == user.id))
    else:
        await session.delete(membership)
    await session.commit()


# --- service accounts ----------------------------------------------------------------------------


def _service_account_schema(membership: MembershipRow, user: UserRow) -> ServiceAccount:
    return ServiceAccount(
        id=user.id,
        org_id=membership.org_id,
        name=user.name,
        role=Role(membership.role),
        created_at=user.created_at,
    )


async def _service_account(
    session: AsyncSession, org_id: str, account_id: str
) -> tuple[MembershipRow, UserRow]:
    row = (
        await session.execute(
            select(MembershipRow, UserRow)
            .join(UserRow, UserRow.id == MembershipRow.user_id)
            .where(
                MembershipRow.org_id == org_id,
                UserRow.id == account_id,
                UserRow.service_org_id == org_id,
            )
        )
    ).first()
    if row is None:
        raise NotFound(f"No service account {account_id} in organization {org_id}")
    return row[0], row[1]


async def create_service_account(
    session: AsyncSession, caller: Principal, org_id: str, data: ServiceAccountCreate
) -> ServiceAccountCreated:
    """Create a non-human member of this organization and its first token (shown once)."""
    caller_role = await authorize(session, caller, org_id, Role.ADMIN)
    _check_grant(caller_role, data.role)
    user = UserRow(
        id=new_id("usr"), kind=PrincipalKind.SERVICE.value, name=data.name, service_org_id=org_id
    )
    session.add(user)
    await session.flush()
    membership = MembershipRow(org_id=org_id, user_id=user.id, role=data.role.value)
    session.add(membership)
    await session.flush()
    token = await create_token(session, user.id, f"{data.name} (initial)")
    base = _service_account_schema(membership, user)
    return ServiceAccountCreated(
        **{f: getattr(base, f) for f in base.__struct_fields__},
        token=token.token,
        token_id=token.id,
    )


async def list_service_accounts(
    session: AsyncSession, caller: Principal, org_id: str, page: PageRequest
) -> Page[ServiceAccount]:
    await authorize(session, caller, org_id, Role.ADMIN)
    statement = select(UserRow).where(UserRow.service_org_id == org_id)
    users, cursor = await fetch_page(session, statement, UserRow.id, page)
    memberships = {
        m.user_id: m
        for m in await session.scalars(
            select(MembershipRow).where(
                MembershipRow.org_id == org_id, MembershipRow.user_id.in_([u.id for u in users])
            )
        )
    }
    items = [_service_account_schema(memberships[u.id], u) for u in users if u.id in memberships]
    return Page(items=items, next_cursor=cursor)


async def delete_service_account(
    session: AsyncSession, caller: Principal, org_id: str, account_id: str
) -> None:
    caller_role = await authorize(session, caller, org_id, Role.ADMIN)
    membership, user = await _service_account(session, org_id, account_id)
    if Role(membership.role) is Role.OWNER and caller_role is not Role.OWNER:
        raise Forbidden("Only an owner can delete an owner service account")
    await session.execute(delete(UserRow).where(UserRow.id == user.id))
    await session.commit()


async def list_service_account_tokens(
    session: AsyncSession, caller: Principal, org_id: str, account_id: str
) -> list[ApiToken]:
    await authorize(session, caller, org_id, Role.ADMIN)
    await _service_account(session, org_id, account_id)
    return await list_tokens(session, account_id)


async def create_service_account_token(
    session: AsyncSession, caller: Principal, org_id: str, account_id: str, data: ApiTokenCreate
) -> ApiTokenCreated:
    caller_role = await authorize(session, caller, org_id, Role.ADMIN)
    membership, _ = await _service_account(session, org_id, account_id)
    if Role(membership.role) is Role.OWNER and caller_role is not Role.OWNER:
        raise Forbidden("Only an owner can issue tokens for an owner service account")
    return await create_token(session, account_id, data.name, data.expires_in)


async def revoke_service_account_token(
    session: AsyncSession, caller: Principal, org_id: str, account_id: str, token_id: str
) -> None:
    await authorize(session, caller, org_id, Role.ADMIN)
    await _service_account(session, org_id, account_id)
    await revoke_token(session, account_id, token_id)
