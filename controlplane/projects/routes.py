"""``/api/v1/orgs/{org_id}/projects``."""

from __future__ import annotations

from litestar import Controller, delete, get, post, put
from litestar.params import FromPath, JSONBody

from controlplane.blobs.references import collect_garbage, digests_under
from controlplane.deps import Blobs, Caller, DbSession, Paging
from controlplane.projects import service
from shared.resources import Page, Project, ProjectCreate, ProjectUpdate

__all__ = ["ProjectController"]


class ProjectController(Controller):
    path = "/api/v1/orgs/{org_id:str}/projects"
    tags = ["projects"]

    @get("/", summary="List projects (viewer)")
    async def list_projects(
        self, session: DbSession, caller: Caller, org_id: FromPath[str], page: Paging
    ) -> Page[Project]:
        return await service.list_projects(session, caller, org_id, page)

    @post("/", summary="Create a project (admin)")
    async def create_project(
        self,
        session: DbSession,
        caller: Caller,
        org_id: FromPath[str],
        data: JSONBody[ProjectCreate],
    ) -> Project:
        return await service.create_project(session, caller, org_id, data)

    @get("/{project_id:str}", summary="Get a project (viewer)")
    async def get_project(
        self, session: DbSession, caller: Caller, org_id: FromPath[str], project_id: FromPath[str]
    ) -> Project:
        return await service.get_project(session, caller, org_id, project_id)

    @put("/{project_id:str}", summary="Update a project; omitted fields keep their value (admin)")
    async def update_project(
        self,
        session: DbSession,
        caller: Caller,
        org_id: FromPath[str],
        project_id: FromPath[str],
        data: JSONBody[ProjectUpdate],
    ) -> Project:
        return await service.update_project(session, caller, org_id, project_id, data)

    @delete("/{project_id:str}", summary="Delete a project and everything under it (admin)")
    async def delete_project(
        self,
        session: DbSession,
        caller: Caller,
        blobs: Blobs,
        org_id: FromPath[str],
        project_id: FromPath[str],
    ) -> None:
        digests = await digests_under(session, project_id=project_id)
        await service.delete_project(session, caller, org_id, project_id)
        await collect_garbage(session, blobs, digests)
