"""REST models for deployments and approvals (operators' side)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from shared.base import RestInput, RestOutput

__all__ = [
    "Approval",
    "ApprovalCreate",
    "ApprovalStatus",
    "CancelRequest",
    "Deployment",
    "DeploymentCreate",
    "DeploymentDetail",
    "DeploymentEvent",
    "DeploymentStatus",
    "DeploymentTarget",
    "RollbackRequest",
    "TargetStatus",
]

DeploymentStatus = Literal[
    "pending_approval",
    "approved",
    "denied",
    "building",
    "deploying",
    "active",
    "failed",
    "rolling_back",
    "rolled_back",
]
ApprovalStatus = Literal["pending", "approved", "denied", "expired", "revoked"]
TargetStatus = Literal[
    "issued", "activating", "active", "failed", "confirmed", "unreachable", "cancelled"
]
Comment = Annotated[str, Meta(max_length=2000)]


class DeploymentCreate(RestInput):
    """Exactly one of ``config_bundle_id`` and ``pipeline_version_id``."""

    config_bundle_id: str | None = None
    pipeline_version_id: str | None = None
    agent_ids: Annotated[list[str], Meta(max_length=1000)] | None = None
    description: Comment = ""


class RollbackRequest(RestInput):
    reason: Comment | None = None


class CancelRequest(RestInput):
    """Why the deployment is stopped (recorded on its event)."""

    reason: Comment | None = None


class Deployment(RestOutput):
    id: str
    org_id: str
    environment_id: str
    pipeline_version_id: str
    config_bundle_id: str | None
    status: DeploymentStatus
    status_reason: str | None
    description: str
    agent_ids: list[str]
    approvals_required: int
    requested_by: str | None
    rollout_deadline_at: datetime | None
    created_at: datetime
    updated_at: datetime
    #: The agents the deployer named (``None``: the whole environment).
    requested_agent_ids: list[str] | None = None
    #: When the current status gives up (statuses that wait for something have one).
    deadline_at: datetime | None = None
    #: The current deployment when this one rolled out: what rolling this one back restores.
    previous_deployment_id: str | None = None
    #: The deployment that became current after this one.
    superseded_by: str | None = None


class DeploymentTarget(RestOutput):
    """One agent's progress in one phase of a deployment."""

    agent_id: str
    phase: Literal["deploy", "rollback"]
    sequence: int
    bundle_digest: str
    status: TargetStatus
    reason: str | None
    updated_at: datetime
    #: How many manifests this target was issued (convergence retries issue fresh ones).
    attempts: int = 1


class DeploymentEvent(RestOutput):
    from_status: str | None
    to_status: str
    actor: str
    reason: str | None
    created_at: datetime


class DeploymentDetail(Deployment):
    targets: list[DeploymentTarget] = msgspec.field(default_factory=list)
    events: list[DeploymentEvent] = msgspec.field(default_factory=list)


class ApprovalCreate(RestInput):
    deployment_id: str
    decision: Literal["approve", "deny"]
    comment: Comment | None = None


class Approval(RestOutput):
    id: str
    org_id: str
    environment_id: str
    deployment_id: str
    status: ApprovalStatus
    requested_by: str | None
    decided_by: str | None
    decided_at: datetime | None
    comment: str | None
    expires_at: datetime
    created_at: datetime
