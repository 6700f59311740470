"""Approvals: open N pending slots per gated deployment, decide, revoke, expire.

Rules: the decider needs the environment's approver role (or higher); the requester may not
approve their own deployment unless the environment allows it; each person decides once per
deployment; one ``deny`` denies the deployment; N approvals approve it and start the rollout.
Undecided approvals expire after the environment's window (a durable job), which denies the
deployment. Revoking an approval before the deployment is active stops it: not yet deploying ->
``denied``; deploying -> ``rolling_back``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import select

from controlplane.db.models import FULL_DEPLOYMENT, ApprovalRow, DeploymentRow, EnvironmentRow
from controlplane.db.types import utcnow
from controlplane.delivery.deadlines import expire_approvals
from controlplane.delivery.lifecycle import move_approval, transition
from controlplane.delivery.rollout import ROLLOUT_JOB, Delivery, start_rollback
from controlplane.delivery.states import ApprovalStatus, DeploymentStatus
from controlplane.errors import Conflict, Forbidden, NotFound
from controlplane.orgs.access import authorize
from controlplane.pagination import fetch_page
from shared.deployments_api import Approval, ApprovalCreate
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
    "close_pending",
    "decide",
    "get_approval",
    "list_approvals",
    "open_approvals",
    "revoke",
]


def approval_schema(row: ApprovalRow) -> Approval:
    return Approval(
        id=row.id,
        org_id=row.org_id,
        environment_id=row.env_id,
        deployment_id=row.deployment_id,
        status=row.status.value,
        requested_by=row.requested_by,
        decided_by=row.decided_by,
        decided_at=row.decided_at,
        comment=row.comment,
        expires_at=row.expires_at,
        created_at=row.created_at,
    )


def approval_deadline(env: EnvironmentRow) -> datetime:
    """When approvals requested now expire: the end of the environment's approval window."""
    return utcnow() + timedelta(seconds=env.approval_window_seconds)


def open_approvals(
    session: AsyncSession, deployment: DeploymentRow, env: EnvironmentRow, expires_at: datetime
) -> None:
    """Create the deployment's pending approvals (no commit).

    Their expiry is the deployment's ``pending_approval`` deadline, scheduled by its lifecycle.
    """
    for _ in range(env.approvals_required):
        session.add(
            ApprovalRow(
                id=new_id("apr"),
                org_id=deployment.org_id,
                env_id=deployment.env_id,
                deployment_id=deployment.id,
                status=ApprovalStatus.PENDING,
                requested_by=deployment.requested_by,
                expires_at=expires_at,
            )
        )


async def close_pending(session: AsyncSession, deployment_id: str) -> None:
    """Withdraw the deployment's undecided approvals (it was cancelled or denied)."""
    await session.flush()  # the session does not autoflush: a slot just decided is not pending
    pending = await session.scalars(
        select(ApprovalRow).where(
            ApprovalRow.deployment_id == deployment_id,
            ApprovalRow.status == ApprovalStatus.PENDING,
        )
    )
    for approval in pending:
        move_approval(approval, ApprovalStatus.REVOKED)


async def _locked_deployment(
    session: AsyncSession, env_id: str, deployment_id: str
) -> DeploymentRow:
    row = await session.scalar(
        select(DeploymentRow)
        .where(DeploymentRow.id == deployment_id, DeploymentRow.env_id == env_id)
        .options(*FULL_DEPLOYMENT)
        .with_for_update()
    )
    if row is None:
        raise NotFound(f"No deployment {deployment_id} in environment {env_id}")
    return row


async def decide(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    data: ApprovalCreate,
    jobs: Jobs,
    settings: Settings,
) -> Approval:
    """Record ``caller``'s approve/deny decision on a pending deployment (commits)."""
    env = await where.resolve(session, caller, Role.VIEWER)
    role = await authorize(session, caller, env.org_id, Role.VIEWER)
    needed = Role(env.approver_role)
    if not role.at_least(needed):
        raise Forbidden(
            f"Deciding approvals here needs the {needed.value} role; you are {role.value}"
        )
    deployment = await _locked_deployment(session, env.id, data.deployment_id)
    if deployment.requested_by == caller.user_id and not env.allow_self_approval:
        raise Forbidden(
            "You requested this deployment; this environment does not allow self-approval"
        )
    if deployment.status != DeploymentStatus.PENDING_APPROVAL:
        raise Conflict(f"Deployment {deployment.id} is {deployment.status}, not pending approval")
    approvals = list(
        await session.scalars(
            select(ApprovalRow)
            .where(ApprovalRow.deployment_id == deployment.id)
            .order_by(ApprovalRow.id)
        )
    )
    if any(a.decided_by == caller.user_id for a in approvals):
        raise Conflict("You already decided on this deployment")
    slot = next((a for a in approvals if a.status == ApprovalStatus.PENDING), None)
    if slot is None:
        raise Conflict("No approval of this deployment is pending")
    if slot.expires_at <= utcnow():
        # The window closed before the deadline job ran: expire now rather than accept a vote.
        await expire_approvals(session, deployment)
        await session.commit()
        raise Conflict("The approval window of this deployment has closed; it is denied")
    slot.decided_by = caller.user_id
    slot.decided_at = utcnow()
    slot.comment = data.comment
    if data.decision == "deny":
        move_approval(slot, ApprovalStatus.DENIED)
        await transition(
            session,
            deployment,
            DeploymentStatus.DENIED,
            actor=caller.user_id,
            reason=f"denied by {caller.user_id}" + (f": {data.comment}" if data.comment else ""),
        )
        await close_pending(session, deployment.id)
    else:
        move_approval(slot, ApprovalStatus.APPROVED)
        granted = sum(1 for a in approvals if a.status == ApprovalStatus.APPROVED)
        if granted >= deployment.approvals_required:
            await transition(
                session,
                deployment,
                DeploymentStatus.APPROVED,
                actor=caller.user_id,
                reason=f"{granted} of {deployment.approvals_required} approvals granted",
                deadline=utcnow() + timedelta(seconds=settings.build_timeout_seconds),
            )
            await jobs.enqueue(
                ROLLOUT_JOB,
                {"deployment_id": deployment.id},
                dedupe_key=f"{ROLLOUT_JOB}:{deployment.id}",
            )
    await session.commit()
    return approval_schema(slot)


async def revoke(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    approval_id: str,
    delivery: Delivery,
) -> Approval:
    """Revoke a granted approval (by its approver or an admin) and stop the deployment."""
    env = await where.resolve(session, caller, Role.VIEWER)
    role = await authorize(session, caller, env.org_id, Role.VIEWER)
    approval = await session.scalar(
        select(ApprovalRow).where(ApprovalRow.id == approval_id, ApprovalRow.env_id == env.id)
    )
    if approval is None:
        raise NotFound(f"No approval {approval_id} in environment {env.id}")
    if approval.decided_by != caller.user_id and not role.at_least(Role.ADMIN):
        raise Forbidden("Only the approver who granted it, or an admin, can revoke an approval")
    if approval.status != ApprovalStatus.APPROVED:
        raise Conflict(
            f"Approval {approval_id} is {approval.status}; only granted approvals can be revoked"
        )
    deployment = await _locked_deployment(session, env.id, approval.deployment_id)
    status = DeploymentStatus(deployment.status)
    reason = f"approval {approval_id} revoked by {caller.user_id}"
    if status in (
        DeploymentStatus.PENDING_APPROVAL,
        DeploymentStatus.APPROVED,
        DeploymentStatus.BUILDING,
    ):
        await transition(
            session, deployment, DeploymentStatus.DENIED, actor=caller.user_id, reason=reason
        )
        await close_pending(session, deployment.id)
    elif status is DeploymentStatus.DEPLOYING:
        await start_rollback(session, delivery, deployment, actor=caller.user_id, reason=reason)
    else:
        raise Conflict(
            f"Deployment {deployment.id} is already {status.value}; roll it back instead"
        )
    move_approval(approval, ApprovalStatus.REVOKED)
    await session.commit()
    return approval_schema(approval)


async def list_approvals(
    session: AsyncSession, caller: Principal, where: EnvPath, page: PageRequest
) -> Page[Approval]:
    env = await where.resolve(session, caller, Role.VIEWER)
    statement = select(ApprovalRow).where(ApprovalRow.env_id == env.id)
    rows, cursor = await fetch_page(session, statement, ApprovalRow.id, page)
    return Page(items=[approval_schema(r) for r in rows], next_cursor=cursor)


async def get_approval(
    session: AsyncSession, caller: Principal, where: EnvPath, approval_id: str
) -> Approval:
    env = await where.resolve(session, caller, Role.VIEWER)
    row = await session.scalar(
        select(ApprovalRow).where(ApprovalRow.id == approval_id, ApprovalRow.env_id == env.id)
    )
    if row is None:
        raise NotFound(f"No approval {approval_id} in environment {env.id}")
    return approval_schema(row)
