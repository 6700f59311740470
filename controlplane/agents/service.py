"""Agents as operators and agents see them: list with status, read, delete, rotate keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import select, update

from controlplane.agents.keys import pending_key_secret, rotate_agent_key
from controlplane.db.engine import AGENT_KEYS, FLEET, mark_changed
from controlplane.db.models import AgentRow
from controlplane.db.types import utcnow
from controlplane.db.values import one_of
from controlplane.errors import BadRequest, Conflict, NotFound
from controlplane.jobs.kinds import RECONCILE_ENVIRONMENT
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
    from collections.abc import Callable
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.agents.fleetview import FleetView
    from controlplane.agents.heartbeats import HeartbeatBuffer
    from controlplane.auth.principal import AgentPrincipal, Principal
    from controlplane.jobs import Jobs
    from controlplane.orgs.paths import EnvPath
    from controlplane.pagination import PageRequest
    from controlplane.settings import Settings
    from controlplane.signing.kek import KeyEncryptionKey

__all__ = [
    "ObservedBundle",
    "agent_record",
    "delete_agent",
    "get_agent",
    "list_agents",
    "observed_bundle",
    "online_agent_ids",
    "own_record",
    "receive_heartbeat",
    "request_key_rotation",
]


@dataclass(frozen=True, slots=True)
class ObservedBundle:
    """The bundle an agent last said it runs, and when it said so."""

    digest: str | None
    seen_at: datetime | None


def _heartbeat_values(row: AgentRow, buffer: HeartbeatBuffer | None) -> dict[str, Any]:
    values: dict[str, Any] = {
        "last_heartbeat_at": row.last_heartbeat_at,
        "agent_version": row.agent_version,
        "active_deployment_id": row.active_deployment_id,
        "active_bundle_digest": row.active_bundle_digest,
        "resources": row.resources,
        "spool": row.spool,
    }
    pending = buffer.pending(row.id) if buffer is not None else None
    if pending is not None:
        values.update(pending.columns())
    return values


def observed_bundle(row: AgentRow, buffer: HeartbeatBuffer | None) -> ObservedBundle:
    """What the agent's newest heartbeat (buffered or written) says it runs."""
    values = _heartbeat_values(row, buffer)
    return ObservedBundle(values["active_bundle_digest"], values["last_heartbeat_at"])


async def online_agent_ids(
    session: AsyncSession,
    env_id: str,
    settings: Settings,
    buffer: HeartbeatBuffer | None,
    among: list[str] | None = None,
) -> list[str]:
    """The environment's agents that are ``online`` now (sorted), optionally only ``among``."""
    statement = select(AgentRow).where(AgentRow.env_id == env_id)
    if among is not None:
        statement = statement.where(one_of(session, AgentRow.id, among))
    now = utcnow()
    online = [
        row.id
        for row in await session.scalars(statement)
        if status_of(_heartbeat_values(row, buffer)["last_heartbeat_at"], settings, now) == "online"
    ]
    return sorted(online)


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
    row: AgentRow,
    settings: Settings,
    buffer: HeartbeatBuffer,
    desired_digest: str | None,
    scopes: list[str] | None = None,
) -> AgentRecord:
    """The agent's record, with any heartbeat still waiting in the buffer applied on top."""
    values = _heartbeat_values(row, buffer)
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
        status=status_of(last, settings, utcnow()),
        last_heartbeat_at=last,
        agent_version=values["agent_version"],
        active_deployment_id=values["active_deployment_id"],
        active_bundle_digest=values["active_bundle_digest"],
        resources=msgspec.convert(resources, Resources) if resources else None,
        spool=msgspec.convert(values["spool"], SpoolStats) if values["spool"] else None,
        created_at=row.created_at,
        public_key=row.public_key,
        desired_bundle_digest=desired_digest,
        in_sync=desired_digest is None or values["active_bundle_digest"] == desired_digest,
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
    desired = env.desired_bundle_digest
    return Page(
        items=[agent_record(r, settings, buffer, desired) for r in rows], next_cursor=cursor
    )


async def get_agent(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    agent_id: str,
    settings: Settings,
    buffer: HeartbeatBuffer,
) -> AgentRecord:
    env = await where.resolve(session, caller, Role.VIEWER)
    row = await _agent_row(session, env.id, agent_id)
    return agent_record(row, settings, buffer, env.desired_bundle_digest)


async def delete_agent(
    session: AsyncSession, caller: Principal, where: EnvPath, agent_id: str, jobs: Jobs
) -> None:
    """Delete the agent; its keys go with it, so its next request is a 401.

    Its rollout targets go with it too, and in-flight deployments are re-evaluated (by the
    delivery domain, through a job) so none waits for an agent that no longer exists.
    """
    env = await where.resolve(session, caller, Role.ADMIN)
    row = await _agent_row(session, env.id, agent_id)
    await session.delete(row)
    await jobs.enqueue(RECONCILE_ENVIRONMENT, {"environment_id": env.id, "agent_id": agent_id})
    mark_changed(session, AGENT_KEYS, FLEET)  # cached keys go at once
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
    session: AsyncSession,
    agent: AgentPrincipal,
    settings: Settings,
    buffer: HeartbeatBuffer,
    fleet: FleetView,
) -> AgentRecord:
    # The shared view first: waiting for it must not hold this request's connection.
    view = await fleet.environment(agent.org_id, agent.env_id)
    row = await session.get(AgentRow, agent.agent_id)
    if row is None:
        raise NotFound(f"No agent {agent.agent_id}")
    return agent_record(row, settings, buffer, view.desired_digest, scopes=sorted(agent.scopes))


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


async def receive_heartbeat(
    session: Callable[[], AsyncSession],
    agent: AgentPrincipal,
    heartbeat: Heartbeat,
    settings: Settings,
    buffer: HeartbeatBuffer,
    kek: KeyEncryptionKey,
    fleet: FleetView,
) -> HeartbeatResponse:
    """Buffer the heartbeat (no write) and tell the agent what awaits it.

    The answer comes from the environment's cached view; only an agent with a rotated key
    waiting for it costs a read of its own, in the request's session (``session()`` opens it
    on first use).
    """
    now = utcnow()
    buffer.record(agent.agent_id, now, heartbeat)
    view = await fleet.environment(agent.org_id, agent.env_id)
    rotated = None
    if agent.agent_id in view.pending_keys:
        rotated = await pending_key_secret(session(), kek, agent.agent_id)
    return HeartbeatResponse(
        next_interval_seconds=settings.agent_heartbeat_interval_seconds,
        deployment_pending=view.deployment_pending(agent.agent_id, heartbeat.active_bundle_digest),
        keyset_version=view.keyset_version,
        rotated_api_key=rotated,
        server_time=now,
    )
