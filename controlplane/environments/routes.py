"""``/api/v1/orgs/{org_id}/projects/{project_id}/environments``."""

from __future__ import annotations

from litestar import Controller, delete, get, post, put
from sqlalchemy.ext.asyncio import AsyncSession

from controlplane.auth.principal import Principal
from controlplane.environments import service
from controlplane.pagination import PageRequest
from shared.resources import Environment, EnvironmentCreate, EnvironmentUpdate, Page

__all__ = ["EnvironmentController"]


class EnvironmentController(Controller):
    path = "/api/v1/orgs/{org_id:str}/projects/{project_id:str}/environments"
    tags = ["environments"]

    @get("/", summary="List environments (viewer)")
    async def list_environments(
        self,
        session: AsyncSession,
        caller: Principal,
        org_id: str,
        project_id: str,
        page: PageRequest,
    ) -> Page[Environment]:
        return await service.list_environments(session, caller, org_id, project_id, page)

    @post("/", summary="Create an environment with its settings (admin)")
    async def create_environment(
        self,
        session: AsyncSession,
        caller: Principal,
        org_id: str,
        project_id: str,
        data: EnvironmentCreate,
    ) -> Environment:
        return await service.create_environment(session, caller, org_id, project_id, data)

    @get("/{env_id:str}", summary="Get an environment (viewer)")
    async def get_environment(
        self, session: AsyncSession, caller: Principal, org_id: str, project_id: str, env_id: str
    ) -> Environment:
        return await service.get_environment(session, caller, org_id, project_id, env_id)

    @put("/{env_id:str}", summary="Update settings; omitted fields keep their value (admin)")
    async def update_environment(
        self,
        session: AsyncSession,
        caller: Principal,
        org_id: str,
        project_id: str,
        env_id: str,
        data: EnvironmentUpdate,
    ) -> Environment:
        return await service.update_environment(session, caller, org_id, project_id, env_id, data)

    @delete("/{env_id:str}", summary="Delete an environment and everything under it (admin)")
    async def delete_environment(
        self, session: AsyncSession, caller: Principal, org_id: str, project_id: str, env_id: str
    ) -> None:
        await service.delete_environment(session, caller, org_id, project_id, env_id)
