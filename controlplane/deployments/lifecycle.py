"""The deployment state machine: the only place a deployment's status is assigned.

::

    pending_approval -> approved -> building -> deploying -> active
    pending_approval -> denied                      (terminal)
    approved | building -> denied                   (an approval was revoked before deploying)
    deploying -> failed
    active | failed | deploying -> rolling_back -> rolled_back

Every transition is validated against :data:`ALLOWED`, recorded as a deployment event (from, to,
actor, reason, time), and idempotent: moving to the status a deployment already has is a no-op.
An illegal transition is a 409.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from controlplane.db.models import DeploymentEventRow
from controlplane.errors import Conflict

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.db.models import DeploymentRow

__all__ = ["ALLOWED", "IN_FLIGHT", "Status", "record_creation", "transition"]


class Status(enum.StrEnum):
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    DENIED = "denied"
    BUILDING = "building"
    DEPLOYING = "deploying"
    ACTIVE = "active"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


ALLOWED: dict[Status, frozenset[Status]] = {
    Status.PENDING_APPROVAL: frozenset({Status.APPROVED, Status.DENIED}),
    Status.APPROVED: frozenset({Status.BUILDING, Status.DENIED}),
    Status.BUILDING: frozenset({Status.DEPLOYING, Status.DENIED, Status.FAILED}),
    Status.DEPLOYING: frozenset({Status.ACTIVE, Status.FAILED, Status.ROLLING_BACK}),
    Status.ACTIVE: frozenset({Status.ROLLING_BACK}),
    Status.FAILED: frozenset({Status.ROLLING_BACK}),
    Status.ROLLING_BACK: frozenset({Status.ROLLED_BACK}),
    Status.DENIED: frozenset(),
    Status.ROLLED_BACK: frozenset(),
}

#: Statuses that count against the environment's in-flight cap.
IN_FLIGHT = frozenset(
    {
        Status.PENDING_APPROVAL,
        Status.APPROVED,
        Status.BUILDING,
        Status.DEPLOYING,
        Status.ROLLING_BACK,
    }
)


def record_creation(session: AsyncSession, deployment: DeploymentRow, actor: str) -> None:
    """Record the initial status of a new deployment as its first event."""
    session.add(
        DeploymentEventRow(
            deployment_id=deployment.id,
            from_status=None,
            to_status=deployment.status,
            actor=actor,
            reason="created",
        )
    )


def transition(
    session: AsyncSession,
    deployment: DeploymentRow,
    to: Status,
    *,
    actor: str,
    reason: str | None = None,
) -> bool:
    """Move ``deployment`` to ``to`` and record the event (no commit).

    Returns:
        ``True`` if the status changed, ``False`` if it already was ``to``.

    Raises:
        Conflict: if the lifecycle does not allow the move.
    """
    current = Status(deployment.status)
    if current is to:
        return False
    if to not in ALLOWED[current]:
        raise Conflict(
            f"Deployment {deployment.id} is {current.value}; it cannot become {to.value}"
        )
    deployment.status = to.value
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
    return True
