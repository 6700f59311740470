"""Deployments as operators see them: create (approval-gated, capped), list, get, roll back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import func, select

from controlplane.approvals.service import open_approvals
from controlplane.db.models import (
    AgentRow,
    ConfigBundleRow,
    DeploymentEventRow,
    DeploymentRow,
    DeploymentTargetRow,
    EnvironmentRow,
)
from controlplane.deployments.lifecycle import IN_FLIGHT, Status, record_creation
from controlplane.deployments.rollout import ROLLOUT_JOB, start_rollback
from controlplane.errors import BadRequest, Invalid, NotFound, TooManyRequests
from controlplane.jobs import enqueue
from controlplane.pagination import fetch_page
from controlplane.pipelines.service import get_version_row
from shared.deployments_api import (
    Deployment,
    DeploymentCreate,
    DeploymentDetail,
    DeploymentEvent,
    DeploymentTarget,
)
from shared.ids import new_id
from shared.resources import Page
from shared.roles import Role

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.auth.principal import Principal
    from controlplane.pagination import PageRequest
    from controlplane.pipelines.service import EnvPath
    from controlplane.settings import Settings
    from controlplane.signing.kek import KeyEncryptionKey

__all__ = [
    "create_deployment",
    "deployment_row",
    "get_deployment",
    "list_deployments",
    "request_rollback",
]


def deployment_schema(row: DeploymentRow) -> Deployment:
    return Deployment(
        id=row.id,
        org_id=row.org_id,
        environment_id=row.env_id,
        pipeline_version_id=row.pipeline_version_id,
        config_bundle_id=row.config_bundle_id,
        status=row.status,  # type: ignore[arg-type]
        status_reason=row.status_reason,
        description=row.description,
        agent_ids=list(row.agent_ids),
        approvals_required=row.approvals_required,
        requested_by=row.requested_by,
        rollout_deadline_at=row.rollout_deadline_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def deployment_row(session: AsyncSession, env_id: str, deployment_id: str) -> DeploymentRow:
    """A deployment of this environment (another environment's is a 404)."""
    row = await session.scalar(
        select(DeploymentRow).where(
            DeploymentRow.id == deployment_id, DeploymentRow.env_id == env_id
        )
    )
    if row is None:
        raise NotFound(f"No deployment {deployment_id} in environment {env_id}")
    return row


async def _targets(session: AsyncSession, env_id: str, requested: list[str] | None) -> list[str]:
    if requested is not None:
        wanted = list(dict.fromkeys(requested))
        found = set(
            await session.scalars(
                select(AgentRow.id).where(AgentRow.env_id == env_id, AgentRow.id.in_(wanted))
            )
        )
        missing = [a for a in wanted if a not in found]
        if missing:
            raise NotFound(f"No agent {missing[0]} in this environment")
        agents = wanted
    else:
        agents = list(
            await session.scalars(
                select(AgentRow.id).where(AgentRow.env_id == env_id).order_by(AgentRow.id)
            )
        )
    if not agents:
        raise Invalid("The deployment has no target agents; enroll an agent first")
    return agents


async def create_deployment(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    data: DeploymentCreate,
    settings: Settings,
) -> Deployment:
    """Create a deployment: ``pending_approval`` when approvals are required, else ``approved``.

    Raises:
        TooManyRequests: the environment's in-flight cap is reached (429 + Retry-After).
    """
    env = await where.resolve(session, caller, Role.DEPLOYER)
    if (data.config_bundle_id is None) == (data.pipeline_version_id is None):
        raise BadRequest("Give exactly one of config_bundle_id and pipeline_version_id")
    # Lock the environment so concurrent creations count one after another (PostgreSQL).
    await session.execute(
        select(EnvironmentRow.id).where(EnvironmentRow.id == env.id).with_for_update()
    )
    in_flight = await session.scalar(
        select(func.count())
        .select_from(DeploymentRow)
        .where(
            DeploymentRow.env_id == env.id, DeploymentRow.status.in_([s.value for s in IN_FLIGHT])
        )
    )
    if (in_flight or 0) >= env.max_inflight_deployments:
        raise TooManyRequests(
            f"This environment allows {env.max_inflight_deployments} in-flight deployment(s); "
            "wait for one to finish",
            retry_after=settings.inflight_retry_after_seconds,
        )
    if data.config_bundle_id is not None:
        bundle = await session.scalar(
            select(ConfigBundleRow).where(
                ConfigBundleRow.id == data.config_bundle_id, ConfigBundleRow.env_id == env.id
            )
        )
        if bundle is None:
            raise NotFound(f"No config bundle {data.config_bundle_id} in environment {env.id}")
        if bundle.status == "failed":
            raise Invalid(f"Config bundle {bundle.id} failed to build: {bundle.error}")
        version_id = bundle.pipeline_version_id
    else:
        assert data.pipeline_version_id is not None  # noqa: S101 - checked above
        version_id = (await get_version_row(session, env.id, data.pipeline_version_id)).id
    agents = await _targets(session, env.id, data.agent_ids)
    gated = env.approvals_required > 0
    row = DeploymentRow(
        id=new_id("dep"),
        org_id=env.org_id,
        env_id=env.id,
        pipeline_version_id=version_id,
        config_bundle_id=data.config_bundle_id,
        status=(Status.PENDING_APPROVAL if gated else Status.APPROVED).value,
        description=data.description,
        agent_ids=agents,
        approvals_required=env.approvals_required,
        requested_by=caller.user_id,
    )
    session.add(row)
    await session.flush()
    record_creation(session, row, caller.user_id)
    if gated:
        await open_approvals(session, row, env)
    else:
        await enqueue(
            session, ROLLOUT_JOB, {"deployment_id": row.id}, dedupe_key=f"{ROLLOUT_JOB}:{row.id}"
        )
    await session.commit()
    return deployment_schema(row)


async def list_deployments(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    page: PageRequest,
    status: str | None,
) -> Page[Deployment]:
    env = await where.resolve(session, caller, Role.VIEWER)
    statement = select(DeploymentRow).where(DeploymentRow.env_id == env.id)
    if status is not None:
        if status not in {s.value for s in Status}:
            raise BadRequest(f"Unknown status {status!r}")
        statement = statement.where(DeploymentRow.status == status)
    rows, cursor = await fetch_page(session, statement, DeploymentRow.id, page)
    return Page(items=[deployment_schema(r) for r in rows], next_cursor=cursor)


async def get_deployment(
    session: AsyncSession, caller: Principal, where: EnvPath, deployment_id: str
) -> DeploymentDetail:
    """The deployment with each agent's progress and the full event history."""
    env = await where.resolve(session, caller, Role.VIEWER)
    row = await deployment_row(session, env.id, deployment_id)
    targets = await session.scalars(
        select(DeploymentTargetRow)
        .where(DeploymentTargetRow.deployment_id == row.id)
        .order_by(DeploymentTargetRow.sequence)
    )
    events = await session.scalars(
        select(DeploymentEventRow)
        .where(DeploymentEventRow.deployment_id == row.id)
        .order_by(DeploymentEventRow.id)
    )
    base = deployment_schema(row)
    return DeploymentDetail(
        **{f: getattr(base, f) for f in base.__struct_fields__},
        targets=[
            DeploymentTarget(
                agent_id=t.agent_id,
                phase=t.phase,  # type: ignore[arg-type]
                sequence=t.sequence,
                bundle_digest=t.bundle_digest,
                status=t.status,
                reason=t.reason,
                updated_at=t.updated_at,
            )
            for t in targets
        ],
        events=[
            DeploymentEvent(
                from_status=e.from_status,
                to_status=e.to_status,
                actor=e.actor,
                reason=e.reason,
                created_at=e.created_at,
            )
            for e in events
        ],
    )


async def request_rollback(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    deployment_id: str,
    reason: str | None,
    kek: KeyEncryptionKey,
    settings: Settings,
) -> DeploymentDetail:
    """Operator rollback: new manifests pointing each target at its previous bundle."""
    env = await where.resolve(session, caller, Role.DEPLOYER)
    row = await session.scalar(
        select(DeploymentRow)
        .where(DeploymentRow.id == deployment_id, DeploymentRow.env_id == env.id)
        .with_for_update()
    )
    if row is None:
        raise NotFound(f"No deployment {deployment_id} in environment {env.id}")
    await start_rollback(
        session, kek, settings, row, actor=caller.user_id, reason=reason or "rollback requested"
    )
    await session.commit()
    return await get_deployment(session, caller, where, deployment_id)
