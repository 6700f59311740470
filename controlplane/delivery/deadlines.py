"""Deadlines: what happens when a status that waits has waited long enough.

Every status that waits for something carries a deadline (set by the transition that entered it)
and a job scheduled for that moment (``run_at``). The job acts only if the deployment is still in
that status; it never raises "not yet": if the deadline lies ahead (clocks differ between
processes) it schedules itself again for that time.

- ``pending_approval``: undecided approvals expire; the deployment is ``denied``.
- ``approved`` / ``building``: the bundle was not built in time; ``failed``.
- ``deploying``: targets that never reported are ``unreachable``; ``failed`` (and
  ``rolling_back`` when the environment rolls back on its own).
- ``rolling_back``: targets that never confirmed are ``unreachable``; ``rolled_back``.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from controlplane.db.models import ApprovalRow, DeploymentRow, DeploymentTargetRow
from controlplane.db.types import utcnow
from controlplane.delivery.lifecycle import DEADLINE_JOB, move_approval, move_target, transition
from controlplane.delivery.rollout import SYSTEM, Delivery, fail, locked_deployment, reconcile
from controlplane.delivery.states import (
    PROGRESSING,
    UNFINISHED_TARGET,
    ApprovalStatus,
    DeploymentStatus,
    TargetPhase,
    TargetStatus,
)
from controlplane.jobs.engine import enqueue

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.jobs import JobContext

__all__ = [
    "LEGACY_EXPIRY_JOB",
    "enforce_deadline",
    "expire_legacy_approvals",
    "mark_unreachable",
    "reconcile_environment",
]

logger = logging.getLogger("byteor.controlplane.delivery")

#: The approval-expiry job of earlier releases; queued ones still run (as a deadline).
LEGACY_EXPIRY_JOB = "approval.expire"


async def mark_unreachable(
    session: AsyncSession, deployment: DeploymentRow, phase: TargetPhase, reason: str
) -> int:
    """Record every target of ``phase`` still waiting for its agent as ``unreachable``."""
    await session.flush()
    targets = await session.scalars(
        select(DeploymentTargetRow).where(
            DeploymentTargetRow.deployment_id == deployment.id,
            DeploymentTargetRow.phase == phase,
            DeploymentTargetRow.status.in_(list(UNFINISHED_TARGET)),
        )
    )
    count = 0
    for target in targets:
        move_target(target, TargetStatus.UNREACHABLE, reason)
        count += 1
    return count


async def expire_approvals(session: AsyncSession, deployment: DeploymentRow) -> None:
    await session.flush()
    pending = await session.scalars(
        select(ApprovalRow).where(
            ApprovalRow.deployment_id == deployment.id,
            ApprovalRow.status == ApprovalStatus.PENDING,
        )
    )
    for approval in pending:
        move_approval(approval, ApprovalStatus.EXPIRED)
    await transition(
        session,
        deployment,
        DeploymentStatus.DENIED,
        actor=SYSTEM,
        reason="approval window expired without enough approvals",
    )


async def _act(session: AsyncSession, delivery: Delivery, deployment: DeploymentRow) -> None:
    status = DeploymentStatus(deployment.status)
    if status is DeploymentStatus.PENDING_APPROVAL:
        await expire_approvals(session, deployment)
    elif status in (DeploymentStatus.APPROVED, DeploymentStatus.BUILDING):
        await transition(
            session,
            deployment,
            DeploymentStatus.FAILED,
            actor=SYSTEM,
            reason=(
                f"the bundle was not built within {delivery.settings.build_timeout_seconds:g}s "
                "of approval"
            ),
        )
    elif status is DeploymentStatus.DEPLOYING:
        silent = await mark_unreachable(
            session, deployment, TargetPhase.DEPLOY, "no report before the rollout deadline"
        )
        await fail(
            session,
            delivery,
            deployment,
            f"rollout deadline passed; {silent} target(s) did not report",
        )
    elif status is DeploymentStatus.ROLLING_BACK:
        await mark_unreachable(
            session, deployment, TargetPhase.ROLLBACK, "no confirmation before the deadline"
        )
        await reconcile(session, delivery, deployment)


async def _legacy_deadline(
    session: AsyncSession, deployment: DeploymentRow, context: JobContext
) -> datetime:
    if deployment.status == DeploymentStatus.PENDING_APPROVAL:
        expires = await session.scalar(
            select(func.min(ApprovalRow.expires_at)).where(
                ApprovalRow.deployment_id == deployment.id
            )
        )
        if expires is not None:
            return expires
    if deployment.status == DeploymentStatus.DEPLOYING and deployment.rollout_deadline_at:
        return deployment.rollout_deadline_at
    timeout = {
        DeploymentStatus.ROLLING_BACK: context.settings.rollback_timeout_seconds,
        DeploymentStatus.DEPLOYING: context.settings.rollout_timeout_seconds,
    }.get(DeploymentStatus(deployment.status), context.settings.build_timeout_seconds)
    return deployment.updated_at + timedelta(seconds=timeout)


async def enforce_deadline(context: JobContext, payload: dict[str, Any]) -> None:
    """Job (run at the deadline): end the status the deployment still waits in."""
    deployment_id = str(payload.get("deployment_id", ""))
    async with context.database.sessionmaker() as session:
        deployment = await locked_deployment(session, deployment_id)
        if deployment is None:
            return
        expected = payload.get("status", deployment.status)
        if deployment.status != expected or deployment.status not in PROGRESSING:
            return  # it moved on: that status's deadline no longer applies
        now = utcnow()
        if deployment.deadline_at is None:
            # A deployment from before deadlines existed: the deadline it was created with.
            deployment.deadline_at = await _legacy_deadline(session, deployment, context)
        if deployment.deadline_at > now:
            await enqueue(
                session,
                DEADLINE_JOB,
                {"deployment_id": deployment.id, "status": deployment.status.value},
                dedupe_key=(
                    f"{DEADLINE_JOB}:{deployment.id}:{deployment.status.value}:"
                    f"{deployment.deadline_at.timestamp():.0f}"
                ),
                run_at=deployment.deadline_at,
            )
            await session.commit()
            return
        logger.info("deployment %s: the %s deadline passed", deployment.id, deployment.status)
        await _act(session, Delivery.of(context), deployment)
        await session.commit()


async def expire_legacy_approvals(context: JobContext, payload: dict[str, Any]) -> None:
    """Job: an approval-expiry job queued by an earlier release acts as the approval deadline."""
    await enforce_deadline(
        context,
        {"deployment_id": payload.get("deployment_id", ""), "status": "pending_approval"},
    )


async def reconcile_environment(context: JobContext, payload: dict[str, Any]) -> None:
    """Job: an agent of the environment was deleted; re-evaluate its in-flight deployments.

    The deleted agent's targets went with it, so a deployment waiting only for it completes now.
    """
    env_id = str(payload.get("environment_id", ""))
    agent_id = payload.get("agent_id")
    delivery = Delivery.of(context)
    async with context.database.sessionmaker() as session:
        ids = list(
            await session.scalars(
                select(DeploymentRow.id).where(
                    DeploymentRow.env_id == env_id,
                    DeploymentRow.status.in_(
                        [DeploymentStatus.DEPLOYING, DeploymentStatus.ROLLING_BACK]
                    ),
                )
            )
        )
        await session.rollback()
        # One transaction per deployment: never hold one deployment's lock while taking another's.
        for deployment_id in sorted(ids):
            deployment = await locked_deployment(session, deployment_id)
            if deployment is None:
                await session.rollback()
                continue
            if agent_id in deployment.agent_ids:
                deployment.agent_ids = [a for a in deployment.agent_ids if a != agent_id]
            await reconcile(session, delivery, deployment)
            await session.commit()
