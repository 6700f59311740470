"""The transition functions: the only places a deployment's, approval's or target's status is set.

Each checks the move against its table in :mod:`controlplane.delivery.states`, is idempotent
(moving to the status a row already has is a no-op that returns ``False``) and refuses an illegal
move with a 409. A deployment's moves are recorded as events (from, to, actor, reason, time) and
carry the deadline of the status they enter: every status that waits for something gets one, and
a job is scheduled for that moment (:mod:`controlplane.delivery.deadlines` acts on it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controlplane.db.models import DeploymentEventRow
from controlplane.delivery.states import (
    APPROVAL_TRANSITIONS,
    DEPLOYMENT_TRANSITIONS,
    PROGRESSING,
    TARGET_TRANSITIONS,
    ApprovalStatus,
    DeploymentStatus,
    TargetStatus,
)
from controlplane.errors import Conflict
from controlplane.jobs.engine import enqueue

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.db.models import ApprovalRow, DeploymentRow, DeploymentTargetRow

__all__ = [
    "DEADLINE_JOB",
    "move_approval",
    "move_target",
    "record_creation",
    "transition",
]

#: The job that enforces a deployment's deadline; payload ``{"deployment_id", "status"}``.
DEADLINE_JOB = "deployment.deadline"


async def _schedule_deadline(
    session: AsyncSession, deployment: DeploymentRow, deadline: datetime | None
) -> None:
    status = DeploymentStatus(deployment.status)
    if status not in PROGRESSING:
        deployment.deadline_at = None
        return
    if deadline is None:
        raise ValueError(f"status {status.value} waits for something and needs a deadline")
    deployment.deadline_at = deadline
    await enqueue(
        session,
        DEADLINE_JOB,
        {"deployment_id": deployment.id, "status": status.value},
        # Each status is entered at most once (the table has no cycles).
        dedupe_key=f"{DEADLINE_JOB}:{deployment.id}:{status.value}",
        run_at=deadline,
    )


async def record_creation(
    session: AsyncSession, deployment: DeploymentRow, actor: str, *, deadline: datetime
) -> None:
    """Record a new deployment's first status as its first event and schedule its deadline."""
    session.add(
        DeploymentEventRow(
            deployment_id=deployment.id,
            from_status=None,
            to_status=DeploymentStatus(deployment.status).value,
            actor=actor,
            reason="created",
        )
    )
    await _schedule_deadline(session, deployment, deadline)


async def transition(
    session: AsyncSession,
    deployment: DeploymentRow,
    to: DeploymentStatus,
    *,
    actor: str,
    reason: str | None = None,
    deadline: datetime | None = None,
) -> bool:
    """Move ``deployment`` to ``to``, record the event and schedule the deadline (no commit).

    Args:
        deadline: When ``to`` gives up; required for statuses that wait (see ``PROGRESSING``).

    Returns:
        ``True`` if the status changed, ``False`` if it already was ``to``.

    Raises:
        Conflict: if the lifecycle does not allow the move.
    """
    current = DeploymentStatus(deployment.status)
    if current is to:
        return False
    if to not in DEPLOYMENT_TRANSITIONS[current]:
        raise Conflict(
            f"Deployment {deployment.id} is {current.value}; it cannot become {to.value}"
        )
    deployment.status = to
    deployment.status_reason = reason
    session.add(
        DeploymentEventRow(
            deployment_id=deployment.id,
            from_status=current.value,
            to_status=to.value,
            actor=actor,
            reason=reason,
        )
    )
    await _schedule_deadline(session, deployment, deadline)
    return True


def move_approval(approval: ApprovalRow, to: ApprovalStatus) -> bool:
    """Move one approval slot to ``to`` (no commit); ``False`` if it already was ``to``.

    Raises:
        Conflict: if the approval lifecycle does not allow the move.
    """
    current = ApprovalStatus(approval.status)
    if current is to:
        return False
    if to not in APPROVAL_TRANSITIONS[current]:
        raise Conflict(f"Approval {approval.id} is {current.value}; it cannot become {to.value}")
    approval.status = to
    return True


def move_target(target: DeploymentTargetRow, to: TargetStatus, reason: str | None = None) -> bool:
    """Move one rollout target to ``to`` (no commit); ``False`` if it already was ``to``.

    Raises:
        Conflict: if the target lifecycle does not allow the move.
    """
    current = TargetStatus(target.status)
    if current is to:
        return False
    if to not in TARGET_TRANSITIONS[current]:
        raise Conflict(
            f"The manifest of agent {target.agent_id} is {current.value}; "
            f"it cannot become {to.value}"
        )
    target.status = to
    target.reason = reason
    return True
