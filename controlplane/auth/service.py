"""Users and bearer tokens: issue, authenticate, list, revoke, and first-run bootstrap."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from controlplane.auth.principal import Principal
from controlplane.auth.secrets import (
    IssuedSecret,
    TokenKind,
    digest_token,
    digests_match,
    issue_secret,
)
from controlplane.db.models import ApiTokenRow, MembershipRow, OrganizationRow, UserRow
from controlplane.db.types import utcnow
from controlplane.errors import Conflict, NotFound, Unauthorized
from shared.ids import new_id
from shared.resources import ApiToken, ApiTokenCreated, Me, Membership
from shared.roles import PrincipalKind, Role

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = [
    "BootstrapResult",
    "authenticate_bearer",
    "bootstrap_owner",
    "create_token",
    "describe_caller",
    "find_or_create_user",
    "list_tokens",
    "new_token_row",
    "revoke_token",
    "token_schema",
]


async def authenticate_bearer(session: AsyncSession, token: str) -> Principal:
    """Resolve a presented bearer token to its principal, or raise a 401."""
    digest = digest_token(token)
    row = (
        await session.execute(
            select(ApiTokenRow, UserRow)
            .join(UserRow, UserRow.id == ApiTokenRow.user_id)
            .where(ApiTokenRow.token_hash == digest)
        )
    ).first()
    if row is None or not digests_match(row[0].token_hash, token):
        raise Unauthorized("The token is unknown")
    token_row, user = row
    if token_row.revoked_at is not None:
        raise Unauthorized("The token has been revoked")
    if token_row.expires_at is not None and token_row.expires_at <= utcnow():
        raise Unauthorized("The token has expired")
    return Principal(
        user_id=user.id,
        kind=PrincipalKind(user.kind),
        token_id=token_row.id,
        service_org_id=user.service_org_id,
        token_expires_at=token_row.expires_at,
        session=token_row.kind == SESSION_KIND,
    )


PERSONAL_KIND = "personal"
SESSION_KIND = "session"


def token_schema(row: ApiTokenRow) -> ApiToken:
    return ApiToken(
        id=row.id,
        name=row.name,
        user_id=row.user_id,
        kind=row.kind,
        hint=row.hint,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


def new_token_row(
    user_id: str,
    name: str,
    expires_in: int | None,
    not_after: datetime | None = None,
    *,
    kind: TokenKind = TokenKind.PERSONAL,
) -> tuple[ApiTokenRow, IssuedSecret]:
    """A token row (not yet added to a session) and its secret, shown once."""
    secret = issue_secret(kind)
    now = utcnow()
    expires_at = now + timedelta(seconds=expires_in) if expires_in else None
    if not_after is not None and (expires_at is None or expires_at > not_after):
        expires_at = not_after
    row = ApiTokenRow(
        id=new_id("tok"),
        user_id=user_id,
        name=name,
        kind=SESSION_KIND if kind is TokenKind.SESSION else PERSONAL_KIND,
        token_hash=secret.digest,
        hint=secret.hint,
        created_at=now,
        expires_at=expires_at,
    )
    return row, secret


async def create_token(
    session: AsyncSession,
    user_id: str,
    name: str,
    expires_in: int | None = None,
    not_after: datetime | None = None,
) -> ApiTokenCreated:
    """Issue a bearer token for ``user_id``; the secret is in the result and nowhere else.

    ``not_after`` caps the new token's expiry: a token never mints one that outlives it.
    """
    row, secret = new_token_row(user_id, name, expires_in, not_after)
    session.add(row)
    await session.commit()
    base = token_schema(row)
    return ApiTokenCreated(
        **{f: getattr(base, f) for f in base.__struct_fields__}, token=secret.token
    )


async def list_tokens(session: AsyncSession, user_id: str) -> list[ApiToken]:
    rows = await session.scalars(
        select(ApiTokenRow).where(ApiTokenRow.user_id == user_id).order_by(ApiTokenRow.id)
    )
    return [token_schema(r) for r in rows]


async def revoke_token(session: AsyncSession, user_id: str, token_id: str) -> None:
    """Revoke one of ``user_id``'s tokens (idempotent); another user's token is a 404."""
    row = await session.scalar(
        select(ApiTokenRow).where(ApiTokenRow.id == token_id, ApiTokenRow.user_id == user_id)
    )
    if row is None:
        raise NotFound(f"No token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await session.commit()


async def find_or_create_user(session: AsyncSession, email: str) -> UserRow:
    """The person with this e-mail address, created (without credentials) if unknown."""
    email = email.strip().lower()
    user = await session.scalar(select(UserRow).where(UserRow.email == email))
    if user is None:
        user = UserRow(id=new_id("usr"), kind=PrincipalKind.HUMAN.value, name=email, email=email)
        session.add(user)
        await session.flush()
    return user


@dataclass(frozen=True, slots=True)
class BootstrapResult:
    user_id: str
    org_id: str
    token: str


async def bootstrap_owner(session: AsyncSession, email: str, org_name: str) -> BootstrapResult:
    """First run: create the first owner, their organization and a bearer token.

    Raises:
        Conflict: if any organization already has an owner.
    """
    owners = await session.scalar(
        select(func.count())
        .select_from(MembershipRow)
        .where(MembershipRow.role == Role.OWNER.value)
    )
    if owners:
        raise Conflict("An owner already exists; bootstrap runs only once")
    user = await find_or_create_user(session, email)
    org = OrganizationRow(id=new_id("org"), name=org_name, runtime_config={})
    session.add(org)
    await session.flush()
    session.add(MembershipRow(org_id=org.id, user_id=user.id, role=Role.OWNER.value))
    token_row, secret = new_token_row(user.id, "bootstrap", None)
    session.add(token_row)
    await session.commit()
    return BootstrapResult(user_id=user.id, org_id=org.id, token=secret.token)


async def describe_caller(session: AsyncSession, caller: Principal) -> Me:
    """The caller's identity and every organization they belong to, with their role."""
    user = await session.get(UserRow, caller.user_id)
    if user is None:  # pragma: no cover - deleting a user deletes its tokens
        raise Unauthorized("The token's user no longer exists")
    rows = await session.execute(
        select(MembershipRow, OrganizationRow.name)
        .join(OrganizationRow, OrganizationRow.id == MembershipRow.org_id)
        .where(MembershipRow.user_id == caller.user_id)
        .order_by(MembershipRow.org_id)
    )
    return Me(
        id=user.id,
        kind=PrincipalKind(user.kind),
        name=user.name,
        email=user.email,
        memberships=[
            Membership(org_id=m.org_id, org_name=name, role=Role(m.role)) for m, name in rows
        ],
    )
