"""REST models for operators reading artifacts."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import Meta

from shared.base import RestInput, RestOutput

__all__ = ["Artifact", "Replay", "ReplayCreate"]


class Artifact(RestOutput):
    id: str
    org_id: str
    environment_id: str
    agent_id: str | None
    kind: str
    digest: str
    size: int
    filename: str
    captured_at: datetime
    deployment_id: str | None
    spec_hash: str | None
    status: str
    ingest: dict[str, Any] | None
    pipeline_version_id: str | None
    created_at: datetime


class ReplayCreate(RestInput):
    mode: Literal["dry_run", "execute"] = "dry_run"
    last_n: Annotated[int, Meta(ge=1, le=100_000)] | None = None


class Replay(RestOutput):
    """A replay job; ``audit`` is the replay audit v1 document once ``completed``."""

    id: str
    artifact_id: str
    environment_id: str
    pipeline_version_id: str
    mode: str
    last_n: int | None
    status: str
    requested_by: str | None
    approved_by: str | None
    audit: dict[str, Any] | None
    audit_sha256: str | None
    error: str | None
    created_at: datetime
