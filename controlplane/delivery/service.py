"""Deployments as operators see them: create (approval-gated, capped), list, get, roll back, cancel."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select

from controlplane.db.models import (
    FULL_DEPLOYMENT,
    AgentRow,
    ConfigBundleRow,
    DeploymentEventRow,
    DeploymentRow,
    DeploymentTargetRow,
    EnvironmentRow,
)
from controlplane.db.types import utcnow
from controlplane.db.values import one_of
from controlplane.delivery.approvals import approval_deadline, close_pending, open_approvals
from controlplane.delivery.lifecycle import record_creation, transition
from controlplane.delivery.rollout import ROLLOUT_JOB, Delivery, locked_deployment, start_rollback
from controlplane.delivery.states import PROGRESSING, DeploymentStatus
from controlplane.environments.service import desired_state
from controlplane.errors import BadRequest, Conflict, Invalid, NotFound, TooManyRequests
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
    from controlplane.jobs import Jobs
    from controlplane.orgs.paths import EnvPath
    from controlplane.pagination import PageRequest
    from controlplane.settings import Settings

__all__ = [
    "cancel_deployment",
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
        status=row.status.value,
        status_reason=row.status_reason,
        description=row.description,
        agent_ids=list(row.agent_ids),
        approvals_required=row.approvals_required,
        requested_by=row.requested_by,
        rollout_deadline_at=row.rollout_deadline_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        requested_agent_ids=(
            list(row.requested_agent_ids) if row.requested_agent_ids is not None else None
        ),
        deadline_at=row.deadline_at,
        previous_deployment_id=row.previous_deployment_id,
        superseded_by=row.superseded_by,
    )


async def deployment_row(session: AsyncSession, env_id: str, deployment_id: str) -> DeploymentRow:
    """A deployment of this environment (another environment's is a 404)."""
    row = await session.scalar(
        select(DeploymentRow)
        .where(DeploymentRow.id == deployment_id, DeploymentRow.env_id == env_id)
        .options(*FULL_DEPLOYMENT)
    )
    if row is None:
        raise NotFound(f"No deployment {deployment_id} in environment {env_id}")
    return row


async def _requested_agents(
    session: AsyncSession, env_id: str, requested: list[str] | None
) -> list[str]:
    """The named agents (each must be in this environment), or every agent here."""
    if requested is not None:
        wanted = list(dict.fromkeys(requested))
        found = set(
            await session.scalars(
                select(AgentRow.id).where(
                    AgentRow.env_id == env_id, one_of(session, AgentRow.id, wanted)
                )
            )
        )
        missing = [a for a in wanted if a not in found]
        if missing:
            raise NotFound(f"No agent {missing[0]} in this environment")
        if not wanted:
            raise Invalid("agent_ids is empty; leave it out to deploy to the whole environment")
        return wanted
    return list(
        await session.scalars(
            select(AgentRow.id).where(AgentRow.env_id == env_id).order_by(AgentRow.id)
        )
    )


async def _check_inflight_cap(
    session: AsyncSession, env: EnvironmentRow, settings: Settings
) -> None:
    holding = list(
        await session.execute(
            select(DeploymentRow.id, DeploymentRow.status)
            .where(DeploymentRow.env_id == env.id, DeploymentRow.status.in_(list(PROGRESSING)))
            .order_by(DeploymentRow.id)
        )
    )
    if len(holding) >= env.max_inflight_deployments:
        names = ", ".join(f"{row_id} ({status.value})" for row_id, status in holding)
        raise TooManyRequests(
            f"This environment allows {env.max_inflight_deployments} in-flight deployment(s) "
            f"and {names} hold(s) the cap; wait for one to finish or cancel it",
            retry_after=settings.inflight_retry_after_seconds,
        )


async def create_deployment(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    data: DeploymentCreate,
    settings: Settings,
    jobs: Jobs,
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
    await _check_inflight_cap(session, env, settings)
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
    agents = await _requested_agents(session, env.id, data.agent_ids)
    gated = env.approvals_required > 0
    row = DeploymentRow(
        id=new_id("dep"),
        org_id=env.org_id,
        env_id=env.id,
        pipeline_version_id=version_id,
        config_bundle_id=data.config_bundle_id,
        status=DeploymentStatus.PENDING_APPROVAL if gated else DeploymentStatus.APPROVED,
        description=data.description,
        agent_ids=agents,
        requested_agent_ids=agents if data.agent_ids is not None else None,
        approvals_required=env.approvals_required,
        requested_by=caller.user_id,
    )
    session.add(row)
    await session.flush()
    if gated:
        deadline = approval_deadline(env)
        open_approvals(session, row, env, deadline)
    else:
        deadline = utcnow() + timedelta(seconds=settings.build_timeout_seconds)
        await jobs.enqueue(
            ROLLOUT_JOB, {"deployment_id": row.id}, dedupe_key=f"{ROLLOUT_JOB}:{row.id}"
        )
    await record_creation(session, row, caller.user_id, deadline=deadline)
    await session.commit()
    return deployment_schema(row)


async def list_deployments(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    page: PageRequest,
    status: str | None,
    superseded: bool | None = None,
) -> Page[Deployment]:
    """The environment's deployments, by status and by whether a newer one replaced them."""
    env = await where.resolve(session, caller, Role.VIEWER)
    statement = (
        select(DeploymentRow).where(DeploymentRow.env_id == env.id).options(*FULL_DEPLOYMENT)
    )
    if status is not None:
        if status not in {s.value for s in DeploymentStatus}:
            raise BadRequest(f"Unknown status {status!r}")
        statement = statement.where(DeploymentRow.status == status)
    if superseded is not None:
        column = DeploymentRow.superseded_by
        statement = statement.where(column.is_not(None) if superseded else column.is_(None))
    rows, cursor = await fetch_page(session, statement, DeploymentRow.id, page)
    return Page(items=[deployment_schema(r) for r in rows], next_cursor=cursor)


async def get_deployment(
    session: AsyncSession, caller: Principal, where: EnvPath, deployment_id: str
) -> DeploymentDetail:
    """The deployment with each agent's progress and the full event history."""
    env = await where.resolve(session, caller, Role.VIEWER)
    row = await deployment_row(session, env.id, deployment_id)
    # Columns, not rows: a fleet rollout has 10,000 targets, and loading each one's signed
    # manifest (decoded JSON) and ORM identity cost ~0.8 s of the event loop per request.
    targets = await session.execute(
        select(
            DeploymentTargetRow.agent_id,
            DeploymentTargetRow.phase,
            DeploymentTargetRow.sequence,
            DeploymentTargetRow.bundle_digest,
            DeploymentTargetRow.status,
            DeploymentTargetRow.reason,
            DeploymentTargetRow.updated_at,
            DeploymentTargetRow.attempts,
        )
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
                phase=t.phase.value,
                sequence=t.sequence,
                bundle_digest=t.bundle_digest,
                status=t.status.value,
                reason=t.reason,
                updated_at=t.updated_at,
                attempts=t.attempts,
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


async def _rollback_refusal(session: AsyncSession, row: DeploymentRow) -> str | None:
    """Why ``row`` cannot be rolled back, or ``None`` if it can."""
    if row.status == DeploymentStatus.ROLLING_BACK:
        return None  # idempotent
    desired = await desired_state(session, row.env_id)
    current = desired.deployment_id if desired else None
    if row.id == current or row.status == DeploymentStatus.DEPLOYING:
        return None
    if row.status == DeploymentStatus.FAILED and row.superseded_by is None:
        return None  # still holds its targets: nothing newer replaced it
    name = f"the current deployment is {current}" if current else "nothing is current"
    return (
        f"Deployment {row.id} is {row.status.value} and not current ({name}); only the "
        "current deployment, or one still in flight, can be rolled back"
    )


async def request_rollback(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    deployment_id: str,
    reason: str | None,
    delivery: Delivery,
) -> DeploymentDetail:
    """Operator rollback: restore the bundle of the deployment this one replaced.

    Raises:
        Conflict: the deployment is neither the current one nor in flight (naming the current).
    """
    env = await where.resolve(session, caller, Role.DEPLOYER)
    row = await locked_deployment(session, deployment_id)
    if row is None or row.env_id != env.id:
        raise NotFound(f"No deployment {deployment_id} in environment {env.id}")
    refusal = await _rollback_refusal(session, row)
    if refusal is not None:
        raise Conflict(refusal)
    await start_rollback(
        session, delivery, row, actor=caller.user_id, reason=reason or "rollback requested"
    )
    await session.commit()
    return await get_deployment(session, caller, where, deployment_id)


async def cancel_deployment(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    deployment_id: str,
    reason: str | None,
    delivery: Delivery,
) -> DeploymentDetail:
    """Stop a deployment that has not reached ``active``.

    Before ``deploying`` it ends ``denied`` (undecided approvals are withdrawn); while
    ``deploying`` it goes ``rolling_back``.

    Raises:
        Conflict: it is already past the point of cancelling (active, failed, rolling back, or
            terminal).
    """
    env = await where.resolve(session, caller, Role.DEPLOYER)
    row = await locked_deployment(session, deployment_id)
    if row is None or row.env_id != env.id:
        raise NotFound(f"No deployment {deployment_id} in environment {env.id}")
    why = f"cancelled by {caller.user_id}" + (f": {reason}" if reason else "")
    status = DeploymentStatus(row.status)
    if status in (
        DeploymentStatus.PENDING_APPROVAL,
        DeploymentStatus.APPROVED,
        DeploymentStatus.BUILDING,
    ):
        await transition(session, row, DeploymentStatus.DENIED, actor=caller.user_id, reason=why)
        await close_pending(session, row.id)
    elif status is DeploymentStatus.DEPLOYING:
        await start_rollback(session, delivery, row, actor=caller.user_id, reason=why)
    else:
        hint = (
            "; roll it back instead"
            if status in (DeploymentStatus.ACTIVE, DeploymentStatus.FAILED)
            else ""
        )
        raise Conflict(f"Deployment {row.id} is {status.value}; it cannot be cancelled{hint}")
    await session.commit()
    return await get_deployment(session, caller, where, deployment_id)
