"""``/api/v1/orgs/{org_id}/projects/{project_id}/environments``."""

from __future__ import annotations

from litestar import Controller, delete, get, post, put
from litestar.params import FromPath, JSONBody

from controlplane.blobs.references import collect_garbage, digests_under
from controlplane.deps import Blobs, Caller, DbSession, Paging
from controlplane.environments import service
from shared.resources import Environment, EnvironmentCreate, EnvironmentUpdate, Page

__all__ = ["EnvironmentController"]


class EnvironmentController(Controller):
    path = "/api/v1/orgs/{org_id:str}/projects/{project_id:str}/environments"
    tags = ["environments"]

    @get("/", summary="List environments (viewer)")
    async def list_environments(
        self,
        session: DbSession,
        caller: Caller,
        org_id: FromPath[str],
        project_id: FromPath[str],
        page: Paging,
    ) -> Page[Environment]:
        return await service.list_environments(session, caller, org_id, project_id, page)

    @post("/", summary="Create an environment with its settings (admin)")
    async def create_environment(
        self,
        session: DbSession,
        caller: Caller,
        org_id: FromPath[str],
        project_id: FromPath[str],
        data: JSONBody[EnvironmentCreate],
    ) -> Environment:
        return await service.create_environment(session, caller, org_id, project_id, data)

    @get("/{env_id:str}", summary="Get an environment (viewer)")
    async def get_environment(
        self,
        session: DbSession,
        caller: Caller,
        org_id: FromPath[str],
        project_id: FromPath[str],
        env_id: FromPath[str],
    ) -> Environment:
        return await service.get_environment(session, caller, org_id, project_id, env_id)

    @put("/{env_id:str}", summary="Update settings; omitted fields keep their value (admin)")
    async def update_environment(
        self,
        session: DbSession,
        caller: Caller,
        org_id: FromPath[str],
        project_id: FromPath[str],
        env_id: FromPath[str],
        data: JSONBody[EnvironmentUpdate],
    ) -> Environment:
        return await service.update_environment(session, caller, org_id, project_id, env_id, data)

    @delete("/{env_id:str}", summary="Delete an environment and everything under it (admin)")
    async def delete_environment(
        self,
        session: DbSession,
        caller: Caller,
        blobs: Blobs,
        org_id: FromPath[str],
        project_id: FromPath[str],
        env_id: FromPath[str],
    ) -> None:
        digests = await digests_under(session, env_id=env_id)
        await service.delete_environment(session, caller, org_id, project_id, env_id)
        await collect_garbage(session, blobs, digests)
