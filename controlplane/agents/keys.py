"""Agent runtime keys: issue, authenticate (scopes, owner), rotate, confirm on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select, update

from controlplane.auth.principal import AgentPrincipal
from controlplane.auth.secrets import TokenKind, digest_token, digests_match, issue_secret
from controlplane.db.engine import AGENT_KEYS, FLEET, begin_write, mark_changed
from controlplane.db.models import AgentKeyRow, AgentRow
from controlplane.db.types import utcnow
from controlplane.errors import Unauthorized
from shared.agents import AGENT_SCOPES
from shared.ids import new_id

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.signing.kek import KeyEncryptionKey

__all__ = ["authenticate_agent_key", "issue_agent_key", "pending_key_secret", "rotate_agent_key"]

ACTIVE = "active"
PENDING = "pending"


def _aad(agent_id: str, key_id: str) -> str:
    return f"byteor:agent-key:{agent_id}:{key_id}"


def issue_agent_key(
    session: AsyncSession, agent_id: str, scopes: list[str] | None = None
) -> tuple[AgentKeyRow, str]:
    """Add an active key for a new agent; returns the row and the secret (shown once)."""
    secret = issue_secret(TokenKind.AGENT_KEY)
    row = AgentKeyRow(
        id=new_id("agk"),
        agent_id=agent_id,
        key_hash=secret.digest,
        hint=secret.hint,
        scopes=list(scopes or AGENT_SCOPES),
        state=ACTIVE,
    )
    session.add(row)
    return row, secret.token


async def rotate_agent_key(
    session: AsyncSession, kek: KeyEncryptionKey, agent_id: str
) -> AgentKeyRow:
    """Create a pending key for the agent (replacing an undelivered one); no commit.

    Its secret is sealed with the KEK until a heartbeat response hands it over; the current key
    keeps working until the agent first authenticates with the new one.
    """
    await session.execute(
        update(AgentKeyRow)
        .where(AgentKeyRow.agent_id == agent_id, AgentKeyRow.state == PENDING)
        .values(state="superseded", revoked_at=utcnow(), sealed_secret=None)
    )
    current = await session.scalar(
        select(AgentKeyRow).where(AgentKeyRow.agent_id == agent_id, AgentKeyRow.state == ACTIVE)
    )
    secret = issue_secret(TokenKind.AGENT_KEY)
    row = AgentKeyRow(
        id=new_id("agk"),
        agent_id=agent_id,
        key_hash=secret.digest,
        hint=secret.hint,
        scopes=list(current.scopes if current else AGENT_SCOPES),
        state=PENDING,
    )
    row.sealed_secret = kek.seal(secret.token.encode(), _aad(agent_id, row.id))
    session.add(row)
    mark_changed(session, FLEET)
    return row


async def pending_key_secret(
    session: AsyncSession, kek: KeyEncryptionKey, agent_id: str
) -> str | None:
    """The secret of the agent's pending key, to hand over in a heartbeat response."""
    row = await session.scalar(
        select(AgentKeyRow).where(AgentKeyRow.agent_id == agent_id, AgentKeyRow.state == PENDING)
    )
    if row is None or row.sealed_secret is None:
        return None
    return kek.unseal(row.sealed_secret, _aad(agent_id, row.id)).decode()


async def authenticate_agent_key(session: AsyncSession, token: str) -> AgentPrincipal:
    """Resolve an agent key; the first use of a pending key promotes it and revokes the old one.

    Reads in the session's current transaction; a promotion ends it and writes in a fresh one.
    """
    digest = digest_token(token)
    statement = (
        select(AgentKeyRow, AgentRow)
        .join(AgentRow, AgentRow.id == AgentKeyRow.agent_id)
        .where(AgentKeyRow.key_hash == digest)
    )
    row = (await session.execute(statement)).first()
    if row is None or not digests_match(row[0].key_hash, token):
        raise Unauthorized("The agent key is unknown")
    key, agent = row
    if key.revoked_at is not None or key.state not in (ACTIVE, PENDING):
        raise Unauthorized("The agent key has been revoked")
    if key.state == PENDING:
        key_id, agent_id = key.id, agent.id  # plain values: the rollback expires the rows
        await session.rollback()
        await begin_write(session)
        promoted = await session.execute(
            update(AgentKeyRow)
            .where(AgentKeyRow.id == key_id, AgentKeyRow.state == PENDING)
            .values(state=ACTIVE, sealed_secret=None)
        )
        if promoted.rowcount:  # type: ignore[attr-defined]
            await session.execute(
                update(AgentKeyRow)
                .where(
                    AgentKeyRow.agent_id == agent_id,
                    AgentKeyRow.state == ACTIVE,
                    AgentKeyRow.id != key_id,
                )
                .values(state="revoked", revoked_at=utcnow())
            )
            mark_changed(session, AGENT_KEYS, FLEET)
        await session.commit()
        row = (await session.execute(statement)).first()
        if row is None or row[0].state != ACTIVE or row[0].revoked_at is not None:
            raise Unauthorized("The agent key has been revoked")
        key, agent = row
    return AgentPrincipal(
        agent_id=agent.id,
        key_id=key.id,
        org_id=agent.org_id,
        env_id=agent.env_id,
        scopes=frozenset(key.scopes),
    )
