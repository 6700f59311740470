"""Agents as operators and agents see them: list with status, read, delete, rotate keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from sqlalchemy import func, select, update

from controlplane.agents.keys import pending_key_secret, rotate_agent_key
from controlplane.db.models import AgentRow, DeploymentTargetRow, KeySetRow
from controlplane.db.types import utcnow
from controlplane.errors import BadRequest, Conflict, NotFound
from controlplane.pagination import fetch_page
from shared.agents import (
    AgentRecord,
    AgentStatus,
    Heartbeat,
    HeartbeatResponse,
    IdentityKey,
    Resources,
    SpoolStats,
)
from shared.agents_admin import AgentKeyRotated
from shared.artifacts import is_identity_key
from shared.resources import Page
from shared.roles import Role

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.agents.heartbeats import HeartbeatBuffer
    from controlplane.auth.principal import AgentPrincipal, Principal
    from controlplane.pagination import PageRequest
    from controlplane.pipelines.service import EnvPath
    from controlplane.settings import Settings
    from controlplane.signing.kek import KeyEncryptionKey

__all__ = [
    "agent_record",
    "delete_agent",
    "get_agent",
    "list_agents",
    "own_record",
    "receive_heartbeat",
    "request_key_rotation",
]


def status_of(last: datetime | None, settings: Settings, now: datetime) -> AgentStatus:
    """``online``/``stale``/``offline`` from the age of the last heartbeat."""
    if last is None:
        return "offline"
    age = (now - last).total_seconds()
    if age <= settings.agent_stale_after_seconds:
        return "online"
    if age <= settings.agent_offline_after_seconds:
        return "stale"
    return "offline"


def agent_record(
    row: AgentRow, settings: Settings, buffer: HeartbeatBuffer, scopes: list[str] | None = None
) -> AgentRecord:
    """The agent's record, with any heartbeat still waiting in the buffer applied on top."""
    values = {
        "last_heartbeat_at": row.last_heartbeat_at,
        "agent_version": row.agent_version,
        "active_deployment_id": row.active_deployment_id,
        "active_bundle_digest": row.active_bundle_digest,
        "resources": row.resources,
        "spool": row.spool,
    }
    pending = buffer.pending(row.id)
    if pending is not None:
        values.update(pending.columns())
    resources = values["resources"]
    last = values["last_heartbeat_at"]
    return AgentRecord(
        id=row.id,
        name=row.name,
        org_id=row.org_id,
        project_id=row.project_id,
        environment_id=row.env_id,
        hostname=row.hostname,
        scopes=scopes or [],
        status=status_of(last, settings, utcnow()),  # type: ignore[arg-type]
        last_heartbeat_at=last,  # type: ignore[arg-type]
        agent_version=values["agent_version"],  # type: ignore[arg-type]
        active_deployment_id=values["active_deployment_id"],  # type: ignore[arg-type]
        active_bundle_digest=values["active_bundle_digest"],  # type: ignore[arg-type]
        resources=msgspec.convert(resources, Resources) if resources else None,
        spool=msgspec.convert(values["spool"], SpoolStats) if values["spool"] else None,
        created_at=row.created_at,
        public_key=row.public_key,
    )


async def _agent_row(session: AsyncSession, env_id: str, agent_id: str) -> AgentRow:
    row = await session.scalar(
        select(AgentRow).where(AgentRow.id == agent_id, AgentRow.env_id == env_id)
    )
    if row is None:
        raise NotFound(f"No agent {agent_id} in environment {env_id}")
    return row


async def list_agents(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    page: PageRequest,
    settings: Settings,
    buffer: HeartbeatBuffer,
) -> Page[AgentRecord]:
    env = await where.resolve(session, caller, Role.VIEWER)
    statement = select(AgentRow).where(AgentRow.env_id == env.id)
    rows, cursor = await fetch_page(session, statement, AgentRow.id, page)
    return Page(items=[agent_record(r, settings, buffer) for r in rows], next_cursor=cursor)


async def get_agent(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    agent_id: str,
    settings: Settings,
    buffer: HeartbeatBuffer,
) -> AgentRecord:
    env = await where.resolve(session, caller, Role.VIEWER)
    return agent_record(await _agent_row(session, env.id, agent_id), settings, buffer)


async def delete_agent(
    session: AsyncSession, caller: Principal, where: EnvPath, agent_id: str
) -> None:
    """Delete the agent; its keys go with it, so its next request is a 401."""
    env = await where.resolve(session, caller, Role.ADMIN)
    row = await _agent_row(session, env.id, agent_id)
    await session.delete(row)
    await session.commit()


async def request_key_rotation(
    session: AsyncSession, caller: Principal, where: EnvPath, agent_id: str, kek: KeyEncryptionKey
) -> AgentKeyRotated:
    env = await where.resolve(session, caller, Role.ADMIN)
    await _agent_row(session, env.id, agent_id)
    key = await rotate_agent_key(session, kek, agent_id)
    await session.commit()
    return AgentKeyRotated(
        agent_id=agent_id,
        key_id=key.id,
        detail=(
            "The new key is delivered in the agent's next heartbeat response; the current key "
            "stays valid until the agent first uses the new one."
        ),
    )


async def own_record(
    session: AsyncSession, agent: AgentPrincipal, settings: Settings, buffer: HeartbeatBuffer
) -> AgentRecord:
    row = await session.get(AgentRow, agent.agent_id)
    if row is None:  # pragma: no cover - the key lookup joined the agent row
        raise NotFound(f"No agent {agent.agent_id}")
    return agent_record(row, settings, buffer, scopes=sorted(agent.scopes))


async def register_identity_key(
    session: AsyncSession, agent: AgentPrincipal, data: IdentityKey
) -> IdentityKey:
    """Record the agent's artifact-signing key once; the same key again is a no-op.

    Raises:
        BadRequest: if it is not an Ed25519 public key.
        Conflict: if the agent already registered another key (delete and re-enroll it).
    """
    if not is_identity_key(data.public_key):
        raise BadRequest("public_key must be an Ed25519 public key: 43 characters of base64url")
    await session.execute(
        update(AgentRow)
        .where(AgentRow.id == agent.agent_id, AgentRow.public_key.is_(None))
        .values(public_key=data.public_key)
    )
    await session.commit()
    registered = await session.scalar(
        select(AgentRow.public_key).where(AgentRow.id == agent.agent_id)
    )
    if registered != data.public_key:
        raise Conflict(
            "This agent already registered another identity key; to change it, delete the "
            "agent and enroll the host again"
        )
    return IdentityKey(public_key=registered)


async def _manifest_waiting(session: AsyncSession, agent_id: str) -> bool:
    waiting = await session.scalar(
        select(DeploymentTargetRow.sequence)
        .where(DeploymentTargetRow.agent_id == agent_id, DeploymentTargetRow.status == "issued")
        .limit(1)
    )
    return waiting is not None


async def latest_keyset_version(session: AsyncSession, org_id: str) -> int:
    version = await session.scalar(
        select(func.max(KeySetRow.version)).where(KeySetRow.org_id == org_id)
    )
    return int(version or 0)


async def receive_heartbeat(
    session: AsyncSession,
    agent: AgentPrincipal,
    heartbeat: Heartbeat,
    settings: Settings,
    buffer: HeartbeatBuffer,
    kek: KeyEncryptionKey,
) -> HeartbeatResponse:
    """Buffer the heartbeat (no write) and tell the agent what awaits it."""
    now = utcnow()
    buffer.record(agent.agent_id, now, heartbeat)
    return HeartbeatResponse(
        next_interval_seconds=settings.agent_heartbeat_interval_seconds,
        deployment_pending=await _manifest_waiting(session, agent.agent_id),
        keyset_version=await latest_keyset_version(session, agent.org_id),
        rotated_api_key=await pending_key_secret(session, kek, agent.agent_id),
        server_time=now,
    )
