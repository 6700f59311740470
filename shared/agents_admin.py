"""REST models for operators managing agents and enrollment tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from msgspec import Meta

from shared.base import RestInput, RestOutput

__all__ = ["AgentKeyRotated", "EnrollmentToken", "EnrollmentTokenCreate", "EnrollmentTokenCreated"]


class EnrollmentTokenCreate(RestInput):
    max_uses: Annotated[int, Meta(ge=1, le=100_000)] = 1
    expires_in: Annotated[int, Meta(ge=60, le=366 * 86400)] = 86400


class EnrollmentToken(RestOutput):
    id: str
    environment_id: str
    hint: str
    max_uses: int
    uses: int
    expires_at: datetime
    revoked_at: datetime | None
    created_at: datetime


class EnrollmentTokenCreated(RestOutput):
    """Returned once at creation: ``token`` is not shown again."""

    id: str
    token: str
    expires_at: datetime
    max_uses: int


class AgentKeyRotated(RestOutput):
    agent_id: str
    key_id: str
    detail: str
