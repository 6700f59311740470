"""REST models for operators reading artifacts."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from shared.base import RestOutput

__all__ = ["Artifact"]


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
