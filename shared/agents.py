"""The agent protocol: enrollment, the agent's own record, heartbeats.

These Structs derive from :class:`~shared.base.Message`, which ignores unknown fields, so an older
agent keeps working against a newer control plane. New fields always get defaults.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from shared.base import Message
from shared.resources import Name
from shared.signing import Envelope

__all__ = [
    "AGENT_SCOPES",
    "AgentRecord",
    "AgentStatus",
    "EnrollRequest",
    "EnrollResponse",
    "Heartbeat",
    "HeartbeatResponse",
    "IdentityKey",
    "Resources",
    "SpoolStats",
]

#: Every scope an agent key can carry; each agent route requires one.
AGENT_SCOPES = (
    "agent:heartbeat",
    "agent:deployment",
    "agent:signing_key",
    "agent:artifact_upload",
)

#: How the control plane sees an agent, from the age of its last heartbeat.
AgentStatus = Literal["online", "stale", "offline"]


#: Integers the database stores as BIGINT.
BigInt = Annotated[int, Meta(ge=0, le=2**63 - 1)]
Short = Annotated[str, Meta(max_length=64)]
Digest = Annotated[str, Meta(max_length=80)]
AnId = Annotated[str, Meta(max_length=40)]


class EnrollRequest(Message):
    """Body of ``POST …/environments/{env_id}/agents`` (all optional)."""

    name: Name | None = None
    hostname: Annotated[str, Meta(max_length=255)] | None = None
    public_key: Annotated[str, Meta(max_length=128)] | None = None
    agent_version: Short | None = None


class IdentityKey(Message):
    """``PUT /api/v1/agents/{agent_id}/identity-key``: the agent's artifact-signing public key.

    Registered once (agents that enroll send it with the enrollment request); the same key again
    is a no-op, another one a 409.
    """

    public_key: Annotated[str, Meta(max_length=128)]


class EnrollResponse(Message):
    """Returned once: ``api_key`` is never shown again."""

    agent_id: str
    api_key: str
    name: str
    org_id: str
    project_id: str
    environment_id: str
    scopes: list[str]
    signing_keys: Envelope


class Resources(Message):
    """Host resource usage sampled by the agent (psutil)."""

    cpu_percent: float = 0.0
    cpu_count: BigInt = 0
    load_1m: float = 0.0
    load_5m: float = 0.0
    load_15m: float = 0.0
    memory_total_bytes: BigInt = 0
    memory_used_bytes: BigInt = 0
    memory_percent: float = 0.0
    disk_total_bytes: BigInt = 0
    disk_used_bytes: BigInt = 0
    disk_percent: float = 0.0
    boot_time_unix: BigInt = 0


class SpoolStats(Message):
    """The agent's artifact spool: what waits for upload and what was dropped to stay bounded."""

    files: BigInt = 0
    bytes: BigInt = 0
    dropped: dict[str, BigInt] = msgspec.field(default_factory=dict)


class Heartbeat(Message):
    """Body of ``POST /api/v1/agents/{id}/heartbeat``."""

    sequence: BigInt = 0
    agent_version: Short = ""
    uptime_seconds: Annotated[float, Meta(ge=0, le=1e12)] = 0.0
    status: Literal["starting", "running", "degraded"] = "running"
    hostname: Annotated[str, Meta(max_length=255)] | None = None
    active_deployment_id: AnId | None = None
    active_bundle_digest: Digest | None = None
    keyset_version: BigInt = 0
    resources: Resources = msgspec.field(default_factory=Resources)
    spool: SpoolStats | None = None


class HeartbeatResponse(Message):
    """What the control plane tells the agent after a heartbeat."""

    next_interval_seconds: float = 30.0
    deployment_pending: bool = False
    keyset_version: int = 0
    rotated_api_key: str | None = None
    server_time: datetime | None = None


class AgentRecord(Message):
    """An agent as operators (and the agent itself) see it."""

    id: str
    name: str
    org_id: str
    project_id: str
    environment_id: str
    hostname: str | None = None
    scopes: list[str] = msgspec.field(default_factory=list)
    status: AgentStatus = "offline"
    last_heartbeat_at: datetime | None = None
    agent_version: str | None = None
    active_deployment_id: str | None = None
    active_bundle_digest: str | None = None
    resources: Resources | None = None
    spool: SpoolStats | None = None
    created_at: datetime | None = None
    #: The agent's Ed25519 identity key (base64url), which signs its artifact uploads.
    public_key: str | None = None
    #: The bundle the environment wants this agent to run (its current deployment's).
    desired_bundle_digest: str | None = None
    #: Whether the agent runs the desired bundle (``True`` when nothing is desired yet).
    in_sync: bool = True
