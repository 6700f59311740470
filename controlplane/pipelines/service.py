"""Drafts (mutable, revisioned), previews (dry runs) and promotion to immutable versions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from msgspec import UNSET
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from controlplane.db.models import PipelineDraftRow, PipelineVersionRow
from controlplane.errors import Conflict, Invalid, NotFound, PreconditionFailed
from controlplane.pagination import fetch_page
from shared.ids import new_id
from shared.pipelines import Draft, DraftCreate, DraftUpdate, Preview, Version
from shared.resources import Page
from shared.roles import Role
from shared.spec import compile_plan

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.auth.principal import Principal
    from controlplane.orgs.paths import EnvPath
    from controlplane.pagination import PageRequest

__all__ = [
    "create_draft",
    "get_draft",
    "get_version",
    "get_version_row",
    "list_drafts",
    "list_versions",
    "preview_draft",
    "promote_draft",
    "update_draft",
]


def draft_schema(row: PipelineDraftRow) -> Draft:
    return Draft(
        id=row.id,
        org_id=row.org_id,
        environment_id=row.env_id,
        name=row.name,
        plan=row.plan,
        revision=row.revision,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def version_schema(row: PipelineVersionRow) -> Version:
    return Version(
        id=row.id,
        org_id=row.org_id,
        environment_id=row.env_id,
        draft_id=row.draft_id,
        number=row.number,
        draft_revision=row.draft_revision,
        plan=row.plan,
        spec_kv=row.spec_kv,
        spec_hash=row.spec_hash,
        created_by=row.created_by,
        created_at=row.created_at,
    )


def parse_if_match(value: str | None) -> int | None:
    """The revision an ``If-Match`` header names (``"3"``, ``3`` or ``W/"3"``); ``*`` is any."""
    if value is None or value.strip() == "*":
        return None
    text = value.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise PreconditionFailed(f'If-Match must name a draft revision such as "3", got {value!r}')
    return int(text)


async def _draft_row(
    session: AsyncSession, env_id: str, draft_id: str, *, for_update: bool = False
) -> PipelineDraftRow:
    statement = select(PipelineDraftRow).where(
        PipelineDraftRow.id == draft_id, PipelineDraftRow.env_id == env_id
    )
    if for_update:  # If-Match checks must not race (PostgreSQL; SQLite is serial already)
        statement = statement.with_for_update()
    row = await session.scalar(statement)
    if row is None:
        raise NotFound(f"No draft {draft_id} in environment {env_id}")
    return row


async def _commit_draft(session: AsyncSession, name: str) -> None:
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"A draft named {name!r} already exists in this environment") from None


async def list_drafts(
    session: AsyncSession, caller: Principal, where: EnvPath, page: PageRequest
) -> Page[Draft]:
    env = await where.resolve(session, caller, Role.VIEWER)
    statement = select(PipelineDraftRow).where(PipelineDraftRow.env_id == env.id)
    rows, cursor = await fetch_page(session, statement, PipelineDraftRow.id, page)
    return Page(items=[draft_schema(r) for r in rows], next_cursor=cursor)


async def create_draft(
    session: AsyncSession, caller: Principal, where: EnvPath, data: DraftCreate
) -> Draft:
    env = await where.resolve(session, caller, Role.DEPLOYER)
    clash = await session.scalar(
        select(PipelineDraftRow.id).where(
            PipelineDraftRow.env_id == env.id, PipelineDraftRow.name == data.name
        )
    )
    if clash is not None:
        raise Conflict(f"A draft named {data.name!r} already exists in this environment")
    row = PipelineDraftRow(
        id=new_id("drf"),
        org_id=env.org_id,
        env_id=env.id,
        name=data.name,
        plan=data.plan,
        revision=1,
        created_by=caller.user_id,
        updated_by=caller.user_id,
    )
    session.add(row)
    await _commit_draft(session, data.name)
    return draft_schema(row)


async def get_draft(
    session: AsyncSession, caller: Principal, where: EnvPath, draft_id: str
) -> Draft:
    env = await where.resolve(session, caller, Role.VIEWER)
    return draft_schema(await _draft_row(session, env.id, draft_id))


async def update_draft(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    draft_id: str,
    data: DraftUpdate,
    if_match: str | None,
) -> Draft:
    """Change a draft and bump its revision; a stale ``If-Match`` revision is a 412."""
    env = await where.resolve(session, caller, Role.DEPLOYER)
    expected = parse_if_match(if_match)
    row = await _draft_row(session, env.id, draft_id, for_update=True)
    if expected is not None and expected != row.revision:
        raise PreconditionFailed(
            f"Draft {draft_id} is at revision {row.revision}, not {expected}; fetch it and retry"
        )
    if data.name is not UNSET and data.name != row.name:
        row.name = data.name
    if data.plan is not UNSET:
        row.plan = data.plan
    row.revision += 1
    row.updated_by = caller.user_id
    await _commit_draft(session, row.name)
    return draft_schema(row)


async def preview_draft(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    draft_id: str,
    candidate_plan: dict[str, Any] | None,
) -> Preview:
    """Validate and lower the stored plan (or ``candidate_plan``); stores nothing."""
    env = await where.resolve(session, caller, Role.VIEWER)
    row = await _draft_row(session, env.id, draft_id)
    result = compile_plan(row.plan if candidate_plan is None else candidate_plan)
    return Preview(
        ok=result.ok,
        spec_kv=result.spec_kv,
        spec_hash=result.spec_hash,
        diagnostics=result.diagnostics,
        revision=row.revision,
    )


async def promote_draft(
    session: AsyncSession, caller: Principal, where: EnvPath, draft_id: str, if_match: str | None
) -> Version:
    """Store the draft's current plan as the next immutable version (422 if it is invalid)."""
    env = await where.resolve(session, caller, Role.DEPLOYER)
    expected = parse_if_match(if_match)
    row = await _draft_row(session, env.id, draft_id, for_update=True)
    if expected is not None and expected != row.revision:
        raise PreconditionFailed(
            f"Draft {draft_id} is at revision {row.revision}, not {expected}; fetch it and retry"
        )
    result = compile_plan(row.plan)
    if not result.ok or result.spec_kv is None or result.spec_hash is None:
        errors = sum(1 for d in result.diagnostics if d.severity == "error")
        raise Invalid(
            f"The plan has {errors} error(s); fix them (see diagnostics) and promote again",
            diagnostics=list(result.diagnostics),
        )
    number = (
        await session.scalar(
            select(func.max(PipelineVersionRow.number)).where(PipelineVersionRow.draft_id == row.id)
        )
        or 0
    ) + 1
    version = PipelineVersionRow(
        id=new_id("ver"),
        org_id=row.org_id,
        env_id=row.env_id,
        draft_id=row.id,
        number=number,
        draft_revision=row.revision,
        plan=row.plan,
        spec_kv=result.spec_kv,
        spec_hash=result.spec_hash,
        created_by=caller.user_id,
    )
    session.add(version)
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict("Another promotion of this draft won the race; retry") from None
    return version_schema(version)


async def list_versions(
    session: AsyncSession, caller: Principal, where: EnvPath, page: PageRequest
) -> Page[Version]:
    env = await where.resolve(session, caller, Role.VIEWER)
    statement = select(PipelineVersionRow).where(PipelineVersionRow.env_id == env.id)
    rows, cursor = await fetch_page(session, statement, PipelineVersionRow.id, page)
    return Page(items=[version_schema(r) for r in rows], next_cursor=cursor)


async def get_version_row(
    session: AsyncSession, env_id: str, version_id: str
) -> PipelineVersionRow:
    """A version of this environment (a version of another environment or org is a 404)."""
    row = await session.scalar(
        select(PipelineVersionRow).where(
            PipelineVersionRow.id == version_id, PipelineVersionRow.env_id == env_id
        )
    )
    if row is None:
        raise NotFound(f"No pipeline version {version_id} in environment {env_id}")
    return row


async def get_version(
    session: AsyncSession, caller: Principal, where: EnvPath, version_id: str
) -> Version:
    env = await where.resolve(session, caller, Role.VIEWER)
    return version_schema(await get_version_row(session, env.id, version_id))
