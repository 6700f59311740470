"""``…/environments/{env_id}/deployments`` and ``…/environments/{env_id}/approvals``."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody, QueryParameter

from controlplane.approvals import service as approvals
from controlplane.deployments import service
from controlplane.deps import Caller, DbSession, Kek, Paging, Where
from shared.deployments_api import (
    Approval,
    ApprovalCreate,
    Deployment,
    DeploymentCreate,
    DeploymentDetail,
    RollbackRequest,
)
from shared.resources import Page

__all__ = ["ApprovalController", "DeploymentController"]

ENV = "/api/v1/orgs/{org_id:str}/projects/{project_id:str}/environments/{env_id:str}"
StatusFilter = Annotated[str | None, QueryParameter(description="only deployments in this status")]


def _wake(state: State) -> None:
    worker = state.get("worker")
    if worker is not None:
        worker.notify()


class DeploymentController(Controller):
    path = ENV + "/deployments"
    tags = ["deployments"]

    @post(
        "/",
        summary="Request a deployment (deployer); pending_approval when approvals are required",
        description="Over the environment's in-flight cap: 429 with Retry-After.",
    )
    async def create_deployment(
        self,
        state: State,
        session: DbSession,
        caller: Caller,
        where: Where,
        data: JSONBody[DeploymentCreate],
    ) -> Deployment:
        created = await service.create_deployment(session, caller, where, data, state.settings)
        _wake(state)
        return created

    @get("/", summary="List deployments, optionally by status (viewer)")
    async def list_deployments(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        page: Paging,
        status: StatusFilter = None,
    ) -> Page[Deployment]:
        return await service.list_deployments(session, caller, where, page, status)

    @get("/{deployment_id:str}", summary="A deployment with per-agent progress and events (viewer)")
    async def get_deployment(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        deployment_id: FromPath[str],
    ) -> DeploymentDetail:
        return await service.get_deployment(session, caller, where, deployment_id)

    @post(
        "/{deployment_id:str}/rollback",
        status_code=202,
        summary="Roll back to each agent's previous bundle with new manifests (deployer)",
    )
    async def rollback(
        self,
        state: State,
        session: DbSession,
        caller: Caller,
        kek: Kek,
        where: Where,
        deployment_id: FromPath[str],
        data: JSONBody[RollbackRequest | None] = None,
    ) -> DeploymentDetail:
        return await service.request_rollback(
            session,
            caller,
            where,
            deployment_id,
            data.reason if data else None,
            kek,
            state.settings,
        )


class ApprovalController(Controller):
    path = ENV + "/approvals"
    tags = ["approvals"]

    @post("/", summary="Approve or deny a pending deployment (the environment's approver role)")
    async def decide(
        self,
        state: State,
        session: DbSession,
        caller: Caller,
        where: Where,
        data: JSONBody[ApprovalCreate],
    ) -> Approval:
        decided = await approvals.decide(session, caller, where, data)
        _wake(state)
        return decided

    @get("/", summary="List approvals (viewer)")
    async def list_approvals(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        page: Paging,
    ) -> Page[Approval]:
        return await approvals.list_approvals(session, caller, where, page)

    @get("/{approval_id:str}", summary="Get an approval (viewer)")
    async def get_approval(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        approval_id: FromPath[str],
    ) -> Approval:
        return await approvals.get_approval(session, caller, where, approval_id)

    @post(
        "/{approval_id:str}/revoke",
        status_code=200,
        summary="Revoke a granted approval; stops a deployment that is not yet active",
    )
    async def revoke(
        self,
        state: State,
        session: DbSession,
        caller: Caller,
        kek: Kek,
        where: Where,
        approval_id: FromPath[str],
    ) -> Approval:
        return await approvals.revoke(session, caller, where, approval_id, kek, state.settings)
