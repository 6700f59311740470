"""``…/environments/{env_id}/drafts`` and ``…/environments/{env_id}/versions``."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, get, post, put
from litestar.params import FromPath, HeaderParameter, JSONBody

from controlplane.deps import Caller, DbSession, Paging, Where
from controlplane.pipelines import service
from shared.base import RestInput
from shared.pipelines import Draft, DraftCreate, DraftUpdate, Plan, Preview, Version
from shared.resources import Page

__all__ = ["DraftController", "VersionController"]

ENV = "/api/v1/orgs/{org_id:str}/projects/{project_id:str}/environments/{env_id:str}"
IfMatch = Annotated[
    str | None,
    HeaderParameter(
        name="If-Match", description='the draft revision you last saw, e.g. "3" (412 if stale)'
    ),
]


class PreviewRequest(RestInput):
    """Optional: preview this plan instead of the stored one (nothing is saved)."""

    plan: Plan | None = None


def _tagged(draft: Draft, status_code: int = 200) -> Response[Draft]:
    return Response(draft, status_code=status_code, headers={"ETag": f'"{draft.revision}"'})


class DraftController(Controller):
    path = ENV + "/drafts"
    tags = ["pipelines"]

    @get("/", summary="List pipeline drafts (viewer)")
    async def list_drafts(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        page: Paging,
    ) -> Page[Draft]:
        return await service.list_drafts(session, caller, where, page)

    @post("/", summary="Create a draft from a plan (deployer)")
    async def create_draft(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        data: JSONBody[DraftCreate],
    ) -> Response[Draft]:
        draft = await service.create_draft(session, caller, where, data)
        return _tagged(draft, 201)

    @get("/{draft_id:str}", summary="Get a draft; ETag is its revision (viewer)")
    async def get_draft(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        draft_id: FromPath[str],
    ) -> Response[Draft]:
        draft = await service.get_draft(session, caller, where, draft_id)
        return _tagged(draft)

    @put("/{draft_id:str}", summary="Update a draft; bumps its revision (deployer)")
    async def update_draft(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        draft_id: FromPath[str],
        data: JSONBody[DraftUpdate],
        if_match: IfMatch = None,
    ) -> Response[Draft]:
        draft = await service.update_draft(session, caller, where, draft_id, data, if_match)
        return _tagged(draft)

    @post(
        "/{draft_id:str}/preview",
        status_code=200,
        summary="Dry run: validate and lower the plan; persists nothing (viewer)",
    )
    async def preview_draft(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        draft_id: FromPath[str],
        data: JSONBody[PreviewRequest | None] = None,
    ) -> Preview:
        return await service.preview_draft(
            session,
            caller,
            where,
            draft_id,
            data.plan if data is not None else None,
        )

    @post("/{draft_id:str}/version", summary="Promote the draft to an immutable version (deployer)")
    async def promote_draft(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        draft_id: FromPath[str],
        if_match: IfMatch = None,
    ) -> Version:
        return await service.promote_draft(session, caller, where, draft_id, if_match)


class VersionController(Controller):
    path = ENV + "/versions"
    tags = ["pipelines"]

    @get("/", summary="List pipeline versions (viewer)")
    async def list_versions(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        page: Paging,
    ) -> Page[Version]:
        return await service.list_versions(session, caller, where, page)

    @get("/{version_id:str}", summary="Get a pipeline version (viewer)")
    async def get_version(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        version_id: FromPath[str],
    ) -> Version:
        return await service.get_version(session, caller, where, version_id)
