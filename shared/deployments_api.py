"""REST models for deployments and approvals (operators' side)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta

from shared.base import RestInput, RestOutput

__all__ = [
    "Approval",
    "ApprovalCreate",
    "ApprovalStatus",
    "Deployment",
    "DeploymentCreate",
    "DeploymentDetail",
    "DeploymentEvent",
    "DeploymentStatus",
    "DeploymentTarget",
    "RollbackRequest",
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
Comment = Annotated[str, Meta(max_length=2000)]


class DeploymentCreate(RestInput):
    """Exactly one of ``config_bundle_id`` and ``pipeline_version_id``."""

    config_bundle_id: str | None = None
    pipeline_version_id: str | None = None
    agent_ids: Annotated[list[str], Meta(max_length=1000)] | None = None
    description: Comment = ""


class RollbackRequest(RestInput):
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


class DeploymentTarget(RestOutput):
    """One agent's progress in one phase of a deployment."""

    agent_id: str
    phase: Literal["deploy", "rollback"]
    sequence: int
    bundle_digest: str
    status: str
    reason: str | None
    updated_at: datetime


class DeploymentEvent(RestOutput):
    from_status: str | None
    to_status: str
    actor: str
    reason: str | None
    created_at: datetime


class DeploymentDetail(Deployment):
    targets: list[DeploymentTarget]
    events: list[DeploymentEvent]


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
