"""The three lifecycles of delivery and their transition tables (pure data, no imports of ours).

Deployment (the nine statuses of the public API reference)::

    pending_approval -> approved -> building -> deploying -> active
    pending_approval -> denied                  (denied, expired or cancelled before approval)
    approved | building -> denied               (cancelled, or an approval was revoked)
    approved | building -> failed               (the bundle could not be built by the deadline)
    deploying -> failed                         (a target failed, or the rollout deadline passed)
    active | failed | deploying -> rolling_back -> rolled_back

Approval (one slot per required approval)::

    pending -> approved | denied | expired | revoked
    approved -> revoked

Rollout target (one agent's part in one phase of a deployment)::

    issued -> activating -> active | failed              (deploy phase)
    issued -> activating -> confirmed | failed           (rollback phase)
    issued | activating -> unreachable | cancelled       (deadline passed, or the phase ended)
    activating | active | failed | unreachable | cancelled -> issued   (a fresh manifest)
    unreachable -> activating | active | confirmed | failed   (a late report still counts)
"""

from __future__ import annotations

import enum

__all__ = [
    "APPROVAL_TRANSITIONS",
    "DEPLOYMENT_TRANSITIONS",
    "PROGRESSING",
    "TARGET_TRANSITIONS",
    "TERMINAL",
    "UNFINISHED_TARGET",
    "ApprovalStatus",
    "DeploymentStatus",
    "TargetPhase",
    "TargetStatus",
]


class DeploymentStatus(enum.StrEnum):
    PENDING_APPROVAL = "pending_approval"
    APPROVED = "approved"
    DENIED = "denied"
    BUILDING = "building"
    DEPLOYING = "deploying"
    ACTIVE = "active"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"


class ApprovalStatus(enum.StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"
    REVOKED = "revoked"


class TargetPhase(enum.StrEnum):
    DEPLOY = "deploy"
    ROLLBACK = "rollback"


class TargetStatus(enum.StrEnum):
    ISSUED = "issued"
    ACTIVATING = "activating"
    ACTIVE = "active"
    FAILED = "failed"
    CONFIRMED = "confirmed"
    UNREACHABLE = "unreachable"
    CANCELLED = "cancelled"


_D = DeploymentStatus
DEPLOYMENT_TRANSITIONS: dict[DeploymentStatus, frozenset[DeploymentStatus]] = {
    _D.PENDING_APPROVAL: frozenset({_D.APPROVED, _D.DENIED}),
    _D.APPROVED: frozenset({_D.BUILDING, _D.DENIED, _D.FAILED}),
    _D.BUILDING: frozenset({_D.DEPLOYING, _D.DENIED, _D.FAILED}),
    _D.DEPLOYING: frozenset({_D.ACTIVE, _D.FAILED, _D.ROLLING_BACK}),
    _D.ACTIVE: frozenset({_D.ROLLING_BACK}),
    _D.FAILED: frozenset({_D.ROLLING_BACK}),
    _D.ROLLING_BACK: frozenset({_D.ROLLED_BACK}),
    _D.DENIED: frozenset(),
    _D.ROLLED_BACK: frozenset(),
}

#: Statuses that wait for something and so always carry a deadline; they are what the
#: environment's in-flight cap counts (each of them can still make progress).
PROGRESSING = frozenset(
    {_D.PENDING_APPROVAL, _D.APPROVED, _D.BUILDING, _D.DEPLOYING, _D.ROLLING_BACK}
)
#: Statuses no transition leaves.
TERMINAL = frozenset(s for s, moves in DEPLOYMENT_TRANSITIONS.items() if not moves)

_A = ApprovalStatus
APPROVAL_TRANSITIONS: dict[ApprovalStatus, frozenset[ApprovalStatus]] = {
    _A.PENDING: frozenset({_A.APPROVED, _A.DENIED, _A.EXPIRED, _A.REVOKED}),
    _A.APPROVED: frozenset({_A.REVOKED}),
    _A.DENIED: frozenset(),
    _A.EXPIRED: frozenset(),
    _A.REVOKED: frozenset(),
}

_T = TargetStatus
TARGET_TRANSITIONS: dict[TargetStatus, frozenset[TargetStatus]] = {
    _T.ISSUED: frozenset(
        {_T.ACTIVATING, _T.ACTIVE, _T.FAILED, _T.CONFIRMED, _T.UNREACHABLE, _T.CANCELLED}
    ),
    _T.ACTIVATING: frozenset(
        {_T.ISSUED, _T.ACTIVE, _T.FAILED, _T.CONFIRMED, _T.UNREACHABLE, _T.CANCELLED}
    ),
    _T.ACTIVE: frozenset({_T.ISSUED}),
    _T.FAILED: frozenset({_T.ISSUED}),
    _T.UNREACHABLE: frozenset({_T.ISSUED, _T.ACTIVATING, _T.ACTIVE, _T.CONFIRMED, _T.FAILED}),
    _T.CANCELLED: frozenset({_T.ISSUED}),
    _T.CONFIRMED: frozenset(),
}

#: Target statuses that still wait for the agent.
UNFINISHED_TARGET = frozenset({_T.ISSUED, _T.ACTIVATING})
