"""Approvals: open N pending slots per gated deployment, decide, revoke, expire.

Rules: the decider needs the environment's approver role (or higher); the requester may not
approve their own deployment unless the environment allows it; each person decides once per
deployment; one ``deny`` denies the deployment; N approvals approve it and start the rollout.
Undecided approvals expire after the environment's window (a durable job), which denies the
deployment. Revoking an approval before the deployment is active stops it: not yet deploying ->
``denied``; deploying -> ``rolling_back``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from controlplane.db.models import ApprovalRow, DeploymentRow, EnvironmentRow
from controlplane.db.types import utcnow
from controlplane.deployments.lifecycle import Status, transition
from controlplane.deployments.rollout import ROLLOUT_JOB, SYSTEM, start_rollback
from controlplane.errors import Conflict, Forbidden, NotFound
from controlplane.jobs import enqueue
from controlplane.orgs.access import authorize
from controlplane.pagination import fetch_page
from shared.deployments_api import Approval, ApprovalCreate
from shared.ids import new_id
from shared.resources import Page
from shared.roles import Role

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.auth.principal import Principal
    from controlplane.jobs import JobContext
    from controlplane.pagination import PageRequest
    from controlplane.pipelines.service import EnvPath
    from controlplane.settings import Settings
    from controlplane.signing.kek import KeyEncryptionKey

__all__ = [
    "EXPIRY_JOB",
    "decide",
    "expire_approvals",
    "get_approval",
    "list_approvals",
    "open_approvals",
    "revoke",
]

EXPIRY_JOB = "approval.expire"


def approval_schema(row: ApprovalRow) -> Approval:
    return Approval(
        id=row.id,
        org_id=row.org_id,
        environment_id=row.env_id,
        deployment_id=row.deployment_id,
        status=row.status,  # type: ignore[arg-type]
        requested_by=row.requested_by,
        decided_by=row.decided_by,
        decided_at=row.decided_at,
        comment=row.comment,
        expires_at=row.expires_at,
        created_at=row.created_at,
    )


async def open_approvals(
    session: AsyncSession, deployment: DeploymentRow, env: EnvironmentRow
) -> None:
    """Create the deployment's pending approvals and schedule their expiry (no commit)."""
    window = timedelta(seconds=env.approval_window_seconds)
    expires_at = utcnow() + window
    for _ in range(env.approvals_required):
        session.add(
            ApprovalRow(
                id=new_id("apr"),
                org_id=deployment.org_id,
                env_id=deployment.env_id,
                deployment_id=deployment.id,
                status="pending",
                requested_by=deployment.requested_by,
                expires_at=expires_at,
            )
        )
    await enqueue(
        session,
        EXPIRY_JOB,
        {"deployment_id": deployment.id},
        dedupe_key=f"{EXPIRY_JOB}:{deployment.id}",
        delay=window,
    )


async def _locked_deployment(
    session: AsyncSession, env_id: str, deployment_id: str
) -> DeploymentRow:
    row = await session.scalar(
        select(DeploymentRow)
        .where(DeploymentRow.id == deployment_id, DeploymentRow.env_id == env_id)
        .with_for_update()
    )
    if row is None:
        raise NotFound(f"No deployment {deployment_id} in environment {env_id}")
    return row


async def decide(
    session: AsyncSession, caller: Principal, where: EnvPath, data: ApprovalCreate
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
    if deployment.status != Status.PENDING_APPROVAL:
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
    slot = next((a for a in approvals if a.status == "pending"), None)
    if slot is None:
        raise Conflict("No approval of this deployment is pending")
    if slot.expires_at <= utcnow():
        # The window closed before the expiry job ran: expire now rather than accept a late vote.
        for approval in approvals:
            if approval.status == "pending":
                approval.status = "expired"
        transition(
            session,
            deployment,
            Status.DENIED,
            actor=SYSTEM,
            reason="approval window expired without enough approvals",
        )
        await session.commit()
        raise Conflict("The approval window of this deployment has closed; it is denied")
    slot.decided_by = caller.user_id
    slot.decided_at = utcnow()
    slot.comment = data.comment
    if data.decision == "deny":
        slot.status = "denied"
        transition(
            session,
            deployment,
            Status.DENIED,
            actor=caller.user_id,
            reason=f"denied by {caller.user_id}" + (f": {data.comment}" if data.comment else ""),
        )
    else:
        slot.status = "approved"
        granted = sum(1 for a in approvals if a.status == "approved")
        if granted >= deployment.approvals_required:
            transition(
                session,
                deployment,
                Status.APPROVED,
                actor=caller.user_id,
                reason=f"{granted} of {deployment.approvals_required} approvals granted",
            )
            await enqueue(
                session,
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
    kek: KeyEncryptionKey,
    settings: Settings,
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
    if approval.status != "approved":
        raise Conflict(
            f"Approval {approval_id} is {approval.status}; only granted approvals can be revoked"
        )
    deployment = await _locked_deployment(session, env.id, approval.deployment_id)
    status = Status(deployment.status)
    reason = f"approval {approval_id} revoked by {caller.user_id}"
    if status in (Status.PENDING_APPROVAL, Status.APPROVED, Status.BUILDING):
        transition(session, deployment, Status.DENIED, actor=caller.user_id, reason=reason)
    elif status is Status.DEPLOYING:
        await start_rollback(
            session, kek, settings, deployment, actor=caller.user_id, reason=reason
        )
    else:
        raise Conflict(
            f"Deployment {deployment.id} is already {status.value}; roll it back instead"
        )
    approval.status = "revoked"
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


async def expire_approvals(context: JobContext, payload: dict[str, Any]) -> None:
    """Job: undecided approvals past the window expire and deny their deployment."""
    deployment_id = str(payload.get("deployment_id", ""))
    async with context.database.sessionmaker() as session:
        deployment = await session.scalar(
            select(DeploymentRow).where(DeploymentRow.id == deployment_id).with_for_update()
        )
        if deployment is None:
            return
        pending = list(
            await session.scalars(
                select(ApprovalRow).where(
                    ApprovalRow.deployment_id == deployment_id, ApprovalRow.status == "pending"
                )
            )
        )
        now = utcnow()
        if any(a.expires_at > now for a in pending):
            raise RuntimeError("approval window not over yet; retrying later")
        for approval in pending:
            approval.status = "expired"
        if deployment.status == Status.PENDING_APPROVAL:
            transition(
                session,
                deployment,
                Status.DENIED,
                actor=SYSTEM,
                reason="approval window expired without enough approvals",
            )
        await session.commit()
