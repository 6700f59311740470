"""The deployment protocol between the control plane and agents.

The control plane issues each target agent a signed **deployment manifest** (an
:class:`~shared.signing.Envelope` whose payload is a :class:`ManifestPayload`). The agent fetches
it from ``GET /api/v1/agents/{id}/deployment`` (long-poll with ``?wait=`` and ``ETag`` /
``If-None-Match``), verifies it against its pinned key set, downloads the archive from
``GET /api/v1/agents/{id}/bundles/{digest}``, activates it, and reports progress with
``POST /api/v1/agents/{id}/deployment``.

An operator rollback is a *new* manifest (newer ``sequence``, ``action="rollback"``) pointing at an
older bundle, so an agent never accepts a sequence it has already seen.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from shared.base import Message
from shared.signing import Envelope

__all__ = [
    "MANIFEST_KIND",
    "AgentDeployment",
    "DeploymentReport",
    "ManifestApproval",
    "ManifestPayload",
    "ReportStatus",
]

MANIFEST_KIND = "deployment_manifest"

#: What an agent reports about a manifest it received.
ReportStatus = Literal["activating", "active", "failed", "rolled_back"]


class ManifestApproval(Message):
    """One approval that let the deployment through."""

    approval_id: str
    approver_id: str
    decided_at: int


class ManifestPayload(Message):
    """The signed payload of a deployment manifest (all times are unix seconds)."""

    deployment_id: str
    agent_id: str
    org_id: str
    environment_id: str
    sequence: int
    bundle_id: str
    bundle_digest: str
    bundle_size: int
    spec_hash: str
    issued_at: int
    expires_at: int
    kind: str = MANIFEST_KIND
    action: Literal["deploy", "rollback"] = "deploy"
    approvals: list[ManifestApproval] = msgspec.field(default_factory=list)


class AgentDeployment(Message):
    """``GET /api/v1/agents/{id}/deployment``: the newest manifest for this agent, if any.

    ``sequence`` is the manifest's; with ``manifest`` null (nothing to apply) it is the newest
    manifest the agent was issued, already applied or withdrawn (0: none). The ``ETag`` is
    ``"seq-<sequence>"`` either way, so an agent that applied a manifest keeps its ETag.
    """

    manifest: Envelope | None = None
    sequence: int = 0


class DeploymentReport(Message):
    """``POST /api/v1/agents/{id}/deployment``: progress of one manifest on this agent."""

    deployment_id: Annotated[str, Meta(max_length=40)]
    sequence: Annotated[int, Meta(ge=1, le=2**63 - 1)]
    status: ReportStatus
    reason: Annotated[str, Meta(max_length=2000)] | None = None
    bundle_digest: Annotated[str, Meta(max_length=80)] | None = None
    spec_hash: Annotated[str, Meta(max_length=80)] | None = None
