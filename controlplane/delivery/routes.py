"""``…/environments/{env_id}/deployments`` and ``…/environments/{env_id}/approvals``."""

from __future__ import annotations

from typing import Annotated, TypeAlias

from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody, QueryParameter

from controlplane.delivery import approvals, service
from controlplane.delivery.rollout import Delivery
from controlplane.deps import Caller, DbSession, JobQueue, Paging, Where
from shared.deployments_api import (
    Approval,
    ApprovalCreate,
    CancelRequest,
    Deployment,
    DeploymentCreate,
    DeploymentDetail,
    RollbackRequest,
)
from shared.resources import Page

__all__ = ["ApprovalController", "DeliveryDep", "DeploymentController"]

#: Keys, settings and heartbeats for delivery (``delivery: DeliveryDep``; see ``Delivery.of_app``).
DeliveryDep: TypeAlias = NamedDependency[Delivery]

ENV = "/api/v1/orgs/{org_id:str}/projects/{project_id:str}/environments/{env_id:str}"
StatusFilter = Annotated[str | None, QueryParameter(description="only deployments in this status")]
SupersededFilter = Annotated[
    bool | None,
    QueryParameter(description="true: only those a newer deployment replaced; false: only others"),
]


class DeploymentController(Controller):
    path = ENV + "/deployments"
    tags = ["deployments"]

    @post(
        "/",
        summary="Request a deployment (deployer); pending_approval when approvals are required",
        description=(
            "Targets are the agents online when it starts rolling out (of `agent_ids`, or of "
            "the whole environment); once `active` it is the environment's current deployment "
            "and every agent converges to it. Over the environment's in-flight cap: 429 with "
            "Retry-After, naming the deployments that hold the cap."
        ),
    )
    async def create_deployment(
        self,
        state: State,
        session: DbSession,
        caller: Caller,
        where: Where,
        jobs: JobQueue,
        data: JSONBody[DeploymentCreate],
    ) -> Deployment:
        return await service.create_deployment(session, caller, where, data, state.settings, jobs)

    @get(
        "/",
        summary="List deployments, optionally by status (viewer)",
        description=(
            "`?status=active&superseded=false` lists the deployment that is current (older "
            "active ones show `superseded_by`)."
        ),
    )
    async def list_deployments(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        page: Paging,
        status: StatusFilter = None,
        superseded: SupersededFilter = None,
    ) -> Page[Deployment]:
        return await service.list_deployments(session, caller, where, page, status, superseded)

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
        summary="Roll back the current (or an in-flight) deployment with new manifests (deployer)",
        description=(
            "Restores the bundle of the deployment this one replaced, which becomes current "
            "again. Any other deployment is a 409 naming the current one."
        ),
    )
    async def rollback(
        self,
        session: DbSession,
        caller: Caller,
        delivery: DeliveryDep,
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
            delivery,
        )

    @post(
        "/{deployment_id:str}/cancel",
        status_code=202,
        summary="Cancel a deployment that has not reached active (deployer)",
        description=(
            "Before `deploying` it ends `denied`; while `deploying` it goes `rolling_back`. "
            "Active, failed, rolling-back and terminal deployments are a 409."
        ),
    )
    async def cancel(
        self,
        session: DbSession,
        caller: Caller,
        delivery: DeliveryDep,
        where: Where,
        deployment_id: FromPath[str],
        data: JSONBody[CancelRequest | None] = None,
    ) -> DeploymentDetail:
        return await service.cancel_deployment(
            session,
            caller,
            where,
            deployment_id,
            data.reason if data else None,
            delivery,
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
        jobs: JobQueue,
        data: JSONBody[ApprovalCreate],
    ) -> Approval:
        return await approvals.decide(session, caller, where, data, jobs, state.settings)

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
        session: DbSession,
        caller: Caller,
        delivery: DeliveryDep,
        where: Where,
        approval_id: FromPath[str],
    ) -> Approval:
        return await approvals.revoke(session, caller, where, approval_id, delivery)
