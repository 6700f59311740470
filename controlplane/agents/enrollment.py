"""Enrollment tokens (create, list, revoke) and enrollment itself.

A token's use count is consumed with one conditional ``UPDATE`` (``uses < max_uses`` and not
revoked or expired), so concurrent enrollments with a single-use token produce exactly one agent on
SQLite and PostgreSQL alike. It is the last statement before the commit, so the token's row is
locked only for the commit: a fleet enrolling with one token does not take turns for the rest.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from controlplane.agents.keys import issue_agent_key
from controlplane.auth.secrets import TokenKind, digest_token, issue_secret
from controlplane.db.models import AgentRow, EnrollmentTokenRow, EnvironmentRow
from controlplane.db.types import utcnow
from controlplane.errors import BadRequest, Conflict, NotFound, Unauthorized
from controlplane.signing.service import current_keyset
from shared.agents import EnrollRequest, EnrollResponse
from shared.agents_admin import EnrollmentToken
from shared.artifacts import is_identity_key
from shared.ids import new_id
from shared.roles import Role

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.auth.principal import Principal
    from controlplane.orgs.paths import EnvPath
    from controlplane.signing.kek import KeyEncryptionKey
    from shared.agents_admin import EnrollmentTokenCreate

__all__ = ["create_token", "enroll", "list_tokens", "revoke_token"]

_NAME_CHARS = re.compile(r"[^a-z0-9-]+")
MAX_NAME_ATTEMPTS = 50


def token_schema(row: EnrollmentTokenRow) -> EnrollmentToken:
    return EnrollmentToken(
        id=row.id,
        environment_id=row.env_id,
        hint=row.hint,
        max_uses=row.max_uses,
        uses=row.uses,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
        created_at=row.created_at,
    )


async def create_token(
    session: AsyncSession, caller: Principal, where: EnvPath, data: EnrollmentTokenCreate
) -> tuple[EnrollmentToken, str]:
    env = await where.resolve(session, caller, Role.ADMIN)
    secret = issue_secret(TokenKind.ENROLLMENT)
    row = EnrollmentTokenRow(
        id=new_id("enr"),
        org_id=env.org_id,
        env_id=env.id,
        token_hash=secret.digest,
        hint=secret.hint,
        max_uses=data.max_uses,
        uses=0,
        expires_at=utcnow() + timedelta(seconds=data.expires_in),
        created_by=caller.user_id,
    )
    session.add(row)
    await session.commit()
    return token_schema(row), secret.token


async def list_tokens(
    session: AsyncSession, caller: Principal, where: EnvPath
) -> list[EnrollmentToken]:
    env = await where.resolve(session, caller, Role.ADMIN)
    rows = await session.scalars(
        select(EnrollmentTokenRow)
        .where(EnrollmentTokenRow.env_id == env.id)
        .order_by(EnrollmentTokenRow.id)
    )
    return [token_schema(r) for r in rows]


async def revoke_token(
    session: AsyncSession, caller: Principal, where: EnvPath, token_id: str
) -> None:
    env = await where.resolve(session, caller, Role.ADMIN)
    row = await session.scalar(
        select(EnrollmentTokenRow).where(
            EnrollmentTokenRow.id == token_id, EnrollmentTokenRow.env_id == env.id
        )
    )
    if row is None:
        raise NotFound(f"No enrollment token {token_id} in environment {env.id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await session.commit()


async def _check_token(
    session: AsyncSession, digest: str, org_id: str, env_id: str
) -> EnrollmentTokenRow:
    """The token if it can still be used here, else :class:`Unauthorized` saying why (no lock)."""
    row = await session.scalar(
        select(EnrollmentTokenRow).where(EnrollmentTokenRow.token_hash == digest)
    )
    if row is None or row.env_id != env_id or row.org_id != org_id:
        raise Unauthorized("The enrollment token is not valid for this environment")
    if row.revoked_at is not None:
        raise Unauthorized("The enrollment token has been revoked")
    if row.expires_at <= utcnow():
        raise Unauthorized("The enrollment token has expired")
    if row.uses >= row.max_uses:
        raise Unauthorized("The enrollment token has been used up")
    return row


async def _spend(session: AsyncSession, digest: str, org_id: str, env_id: str) -> None:
    """Consume one use, as the transaction's last statement before its commit.

    The conditional ``UPDATE`` is what decides; it locks the token's row until the commit, so
    it comes last: every enrollment with the same token (a provisioning script's, for a whole
    fleet) waits for that lock, and holding it across the agent's inserts and the key set's
    read made 10,000 enrollments on PostgreSQL take turns for the whole of each transaction.
    """
    spent = await session.execute(
        update(EnrollmentTokenRow)
        .where(
            EnrollmentTokenRow.token_hash == digest,
            EnrollmentTokenRow.env_id == env_id,
            EnrollmentTokenRow.org_id == org_id,
            EnrollmentTokenRow.uses < EnrollmentTokenRow.max_uses,
            EnrollmentTokenRow.revoked_at.is_(None),
            EnrollmentTokenRow.expires_at > utcnow(),
        )
        .values(uses=EnrollmentTokenRow.uses + 1)
        .returning(EnrollmentTokenRow.id)
    )
    if spent.scalar_one_or_none() is not None:
        return
    await session.rollback()  # nothing of this enrollment is kept
    await _check_token(session, digest, org_id, env_id)  # raises, saying why
    raise Unauthorized("The enrollment token has been used up")  # pragma: no cover - a race


def _base_name(request: EnrollRequest) -> str:
    if request.name:
        return request.name
    if request.hostname:
        cleaned = _NAME_CHARS.sub("-", request.hostname.lower().split(".")[0]).strip("-")
        if cleaned:
            return cleaned[:100]
    return "agent"


async def _unique_name(session: AsyncSession, env_id: str, base: str, explicit: bool) -> str:
    taken = set(
        await session.scalars(
            select(AgentRow.name).where(
                AgentRow.env_id == env_id,
                (AgentRow.name == base) | AgentRow.name.like(f"{base}-%"),
            )
        )
    )
    if base not in taken:
        return base
    if explicit:
        raise Conflict(f"An agent named {base!r} already exists in this environment")
    suffix = 2
    while f"{base}-{suffix}" in taken:
        suffix += 1
    return f"{base}-{suffix}"


async def enroll(
    session: AsyncSession,
    kek: KeyEncryptionKey,
    token: str,
    org_id: str,
    project_id: str,
    env_id: str,
    request: EnrollRequest,
) -> EnrollResponse:
    """Consume one use of ``token`` and create the agent with its runtime key (shown once)."""
    if request.public_key is not None and not is_identity_key(request.public_key):
        raise BadRequest("public_key must be an Ed25519 public key: 43 characters of base64url")
    base = _base_name(request)
    digest = digest_token(token)
    for _ in range(MAX_NAME_ATTEMPTS):
        used = await _check_token(session, digest, org_id, env_id)
        name = await _unique_name(session, env_id, base, explicit=bool(request.name))
        env = await session.get(EnvironmentRow, env_id)
        if env is None or env.project_id != project_id:
            await session.rollback()
            raise Unauthorized("The enrollment token is not valid for this environment")
        # Before the agent's insert: an organization's first key set locks its row, which
        # conflicts with the key-share lock the insert's foreign key takes (two enrollments
        # doing it the other way round deadlocked each other on PostgreSQL).
        keyset = await current_keyset(session, kek, org_id)
        agent = AgentRow(
            id=new_id("agt"),
            org_id=org_id,
            project_id=project_id,
            env_id=env_id,
            name=name,
            hostname=request.hostname,
            public_key=request.public_key,
            agent_version=request.agent_version,
            enrolled_with=used.id,
        )
        session.add(agent)
        try:
            await session.flush()
        except IntegrityError:
            await session.rollback()  # a concurrent enrollment took the name; the use is undone
            continue
        key, secret = issue_agent_key(session, agent.id)
        await session.flush()
        await _spend(session, digest, org_id, env_id)
        await session.commit()
        return EnrollResponse(
            agent_id=agent.id,
            api_key=secret,
            name=agent.name,
            org_id=org_id,
            project_id=project_id,
            environment_id=env_id,
            scopes=list(key.scopes),
            signing_keys=keyset,
        )
    raise Conflict("Could not find a free agent name; pass an explicit name")
