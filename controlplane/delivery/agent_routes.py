"""Agent-facing delivery routes under ``/api/v1/agents/{agent_id}``: manifests, reports, bundles."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import File
from sqlalchemy import select

from controlplane.db.models import DeploymentTargetRow
from controlplane.db.scoped import request_session
from controlplane.delivery.convergence import Served, latest_sequence, manifest_for
from controlplane.delivery.rollout import Delivery
from controlplane.deps import Blobs, DbSession, authenticated_agent
from controlplane.errors import NotFound
from controlplane.request import ByteorRequest
from shared.deployments import AgentDeployment, DeploymentReport
from shared.signing import Envelope

if TYPE_CHECKING:
    from controlplane.agents.fleetview import FleetView

__all__ = ["AgentDeliveryController"]


class AgentDeliveryController(Controller):
    path = "/api/v1/agents/{agent_id:str}"
    tags = ["agent runtime"]
    opt = {"credential": "agent"}
    security = [{"agent_key": []}]

    @get(
        "/deployment",
        opt={"scope": "agent:deployment"},
        summary="The manifest this agent should apply now (long-poll with ?wait=, ETag)",
        description=(
            "Level-triggered: when the agent does not run its environment's desired bundle, a "
            "fresh signed manifest for it is issued on this call (a host enrolled late, back "
            "from being offline, or rebuilt). With `If-None-Match` equal to the current ETag the "
            "request waits up to `wait` seconds (bounded) for a newer manifest, then answers 304."
        ),
    )
    async def deployment(
        self,
        request: ByteorRequest,
        agent_id: FromPath[str],
        wait: Annotated[float, QueryParameter(ge=0, le=3600)] = 0,
        if_none_match: Annotated[str | None, HeaderParameter(name="If-None-Match")] = None,
    ) -> Response[Any]:
        # A fleet's most frequent request: nothing for Litestar to resolve (see the heartbeat).
        state = request.app.state
        session = request_session(request.scope, state.database)
        delivery = Delivery.of_app(state)
        agent = authenticated_agent(request)
        fleet: FleetView = state.fleet
        deadline = time.monotonic() + min(wait, state.settings.long_poll_max_seconds)
        # The full convergence decision runs once per request. While waiting, the agent's own
        # newest manifest is read again only when something may have changed for it: it was
        # woken in this process, the environment's shared view (one read per environment per
        # second, not one per waiting agent) shows a manifest waiting for it, or the desired
        # bundle changed.
        desired = (await fleet.environment(agent.org_id, agent.env_id)).desired_digest
        newest = await latest_sequence(session, agent.agent_id)  # before deciding: no lost wake
        served = await manifest_for(session, delivery, agent.agent_id)
        while True:
            if served.issued_to:
                state.agent_signals.notify(served.issued_to)
            sequence, manifest = served.sequence, served.manifest
            etag = f'"seq-{sequence}"'
            await session.rollback()  # never hold a transaction while waiting
            remaining = deadline - time.monotonic()
            if if_none_match != etag or remaining <= 0:
                break
            woken = await state.agent_signals.wait(agent.agent_id, timeout=min(1.0, remaining))
            view = await fleet.environment(agent.org_id, agent.env_id)
            if not woken and agent.agent_id not in view.waiting and view.desired_digest == desired:
                served = Served(served.sequence, served.manifest)
                continue
            moved_on = view.desired_digest != desired  # converge now, not at the next poll
            desired = view.desired_digest
            now_newest = await latest_sequence(session, agent.agent_id)
            if now_newest != newest or moved_on:
                newest = now_newest
                served = await manifest_for(session, delivery, agent.agent_id)
            else:
                served = Served(served.sequence, served.manifest)
        if if_none_match == etag:
            return Response(content=b"", status_code=304, headers={"ETag": etag})
        body = AgentDeployment(
            manifest=msgspec.convert(manifest, Envelope) if manifest else None,
            sequence=sequence,
        )
        return Response(body, headers={"ETag": etag})

    @post(
        "/deployment",
        status_code=204,
        opt={"scope": "agent:deployment"},
        summary="Report progress of a manifest: activating, active, failed (+reason), rolled_back",
    )
    async def report_deployment(
        self,
        request: ByteorRequest,
        agent_id: FromPath[str],
        data: JSONBody[DeploymentReport],
    ) -> None:
        # Applied with the other reports waiting now, in one transaction; answered once durable.
        await request.app.state.reports.submit(authenticated_agent(request).agent_id, data)

    @get(
        "/bundles/{digest:str}",
        opt={"scope": "agent:deployment"},
        media_type="application/gzip",
        summary="Download a bundle archive deployed to this agent",
    )
    async def bundle(
        self,
        request: Request[Any, Any, Any],
        session: DbSession,
        blobs: Blobs,
        agent_id: FromPath[str],
        digest: FromPath[str],
    ) -> File:
        deployed = await session.scalar(
            select(DeploymentTargetRow.bundle_id)
            .where(
                DeploymentTargetRow.agent_id == authenticated_agent(request).agent_id,
                DeploymentTargetRow.bundle_digest == digest,
            )
            .limit(1)
        )
        if deployed is None or not blobs.exists(digest):
            raise NotFound(f"No bundle {digest} was deployed to this agent")
        return File(path=blobs.path_for(digest), media_type="application/gzip")
