"""Artifacts as operators see them: list with filters, read, download."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from controlplane.db.models import ArtifactRow
from controlplane.errors import BadRequest, NotFound
from controlplane.pagination import fetch_page
from shared.artifacts import ARTIFACT_KINDS
from shared.artifacts_api import Artifact
from shared.resources import Page
from shared.roles import Role

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.auth.principal import Principal
    from controlplane.orgs.paths import EnvPath
    from controlplane.pagination import PageRequest

__all__ = ["ArtifactFilters", "artifact_row", "get_artifact", "list_artifacts"]

STATUSES = ("received", "valid", "invalid")


def artifact_schema(row: ArtifactRow) -> Artifact:
    return Artifact(
        id=row.id,
        org_id=row.org_id,
        environment_id=row.env_id,
        agent_id=row.agent_id,
        kind=row.kind,
        digest=row.digest,
        size=row.size,
        filename=row.filename,
        captured_at=row.captured_at,
        deployment_id=row.deployment_id,
        spec_hash=row.spec_hash,
        status=row.status,
        ingest=row.ingest,
        pipeline_version_id=row.pipeline_version_id,
        created_at=row.created_at,
    )


class ArtifactFilters:
    __slots__ = ("agent_id", "kind", "since", "status", "until")

    def __init__(
        self,
        agent_id: str | None,
        kind: str | None,
        status: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> None:
        if kind is not None and kind not in ARTIFACT_KINDS:
            raise BadRequest(f"kind must be one of {', '.join(ARTIFACT_KINDS)}")
        if status is not None and status not in STATUSES:
            raise BadRequest(f"status must be one of {', '.join(STATUSES)}")
        self.agent_id, self.kind, self.status, self.since, self.until = (
            agent_id,
            kind,
            status,
            since,
            until,
        )


async def artifact_row(session: AsyncSession, env_id: str, artifact_id: str) -> ArtifactRow:
    row = await session.scalar(
        select(ArtifactRow).where(ArtifactRow.id == artifact_id, ArtifactRow.env_id == env_id)
    )
    if row is None:
        raise NotFound(f"No artifact {artifact_id} in environment {env_id}")
    return row


async def list_artifacts(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    page: PageRequest,
    filters: ArtifactFilters,
) -> Page[Artifact]:
    env = await where.resolve(session, caller, Role.VIEWER)
    statement = select(ArtifactRow).where(ArtifactRow.env_id == env.id)
    if filters.agent_id:
        statement = statement.where(ArtifactRow.agent_id == filters.agent_id)
    if filters.kind:
        statement = statement.where(ArtifactRow.kind == filters.kind)
    if filters.status:
        statement = statement.where(ArtifactRow.status == filters.status)
    if filters.since:
        statement = statement.where(ArtifactRow.captured_at >= filters.since)
    if filters.until:
        statement = statement.where(ArtifactRow.captured_at < filters.until)
    rows, cursor = await fetch_page(session, statement, ArtifactRow.id, page)
    return Page(items=[artifact_schema(r) for r in rows], next_cursor=cursor)


async def get_artifact(
    session: AsyncSession, caller: Principal, where: EnvPath, artifact_id: str
) -> Artifact:
    env = await where.resolve(session, caller, Role.VIEWER)
    return artifact_schema(await artifact_row(session, env.id, artifact_id))
