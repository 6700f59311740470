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
from controlplane.deps import Blobs, authenticated_agent
from controlplane.errors import NotFound
from controlplane.request import ByteorRequest
from shared.deployments import AgentDeployment, DeploymentReport
from shared.signing import Envelope

if TYPE_CHECKING:
    from controlplane.agents.fleetview import FleetView
    from controlplane.delivery.grants import BundleGrants
    from controlplane.delivery.signals import AgentSignals

__all__ = ["NOTHING_ETAG", "AgentDeliveryController"]

#: The ETag of "no manifest to apply".
NOTHING_ETAG = '"seq-0"'


def _held_sequence(etag: str | None) -> int | None:
    """The sequence an ``If-None-Match`` of ours names (``"seq-N"``), else ``None``."""
    if etag is None or not etag.startswith('"seq-') or not etag.endswith('"'):
        return None
    digits = etag[5:-1]
    return int(digits) if digits.isdigit() and len(digits) <= 18 else None


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
        agent = authenticated_agent(request)
        fleet: FleetView = state.fleet
        signals: AgentSignals = state.agent_signals
        deadline = time.monotonic() + min(wait, state.settings.long_poll_max_seconds)
        held = _held_sequence(if_none_match)
        # Registered before deciding, so a manifest issued meanwhile wakes this poll.
        with signals.waiter(agent.agent_id) as waiter:
            view = await fleet.environment(agent.org_id, agent.env_id)
            newest = -1  # the agent's newest manifest when the decision was taken (-1: unknown)
            if held is not None and signals.settled(agent.agent_id, held, view):
                served = Served(held)  # answered so recently, and nothing changed: wait at once
            else:
                waiter.acted = False  # a report from here on may not show in what it reads
                served = await manifest_for(
                    session, Delivery.of_app(state), agent.agent_id, view.desired
                )
                newest = served.newest  # read by the decision, in the same snapshot
                if served.stable:
                    signals.settle(waiter, served.sequence, view)
            while True:
                if served.issued_to:
                    signals.notify(served.issued_to)
                etag = f'"seq-{served.sequence}"'
                await session.rollback()  # never hold a transaction while waiting
                remaining = deadline - time.monotonic()
                if if_none_match != etag or remaining <= 0:
                    break
                # Woken by a manifest issued here, or by the environment's view (any process).
                waiter.sequence, waiter.desired = served.sequence, view.desired_digest
                with signals.watching(waiter, agent.org_id, agent.env_id):
                    woken = await waiter.wait(remaining)
                served = Served(served.sequence, served.manifest)  # its wake-ups were sent
                if not woken:
                    continue
                waiter.event.clear()  # a wake-up from here on is a new one
                delivered, waiter.delivered = waiter.delivered, None
                if delivered is not None and delivered[0] > served.sequence:
                    served = Served(*delivered)  # issued and committed just now
                    if not waiter.read:  # issued here: only a report from now on counts
                        waiter.acted = False
                    waiter.read = False
                    signals.settle_delivered(waiter, served.sequence)
                    continue
                view = await fleet.environment(agent.org_id, agent.env_id)
                now_newest = await latest_sequence(session, agent.agent_id)
                if now_newest != newest or view.desired_digest != waiter.desired:
                    newest = now_newest
                    waiter.acted = False
                    served = await manifest_for(
                        session, Delivery.of_app(state), agent.agent_id, view.desired
                    )
                    # A rollout that finishes wakes every poll of the environment: remember the
                    # answers, or each would decide again on its next poll.
                    if served.stable:
                        signals.settle(waiter, served.sequence, view)
        if if_none_match == etag:
            return Response(content=b"", status_code=304, headers={"ETag": etag})
        manifest = msgspec.convert(served.manifest, Envelope) if served.manifest else None
        if manifest is not None:
            digest = manifest.payload.get("bundle_digest")
            if isinstance(digest, str):  # its download is answered without a query
                grants: BundleGrants = state.bundle_grants
                grants.grant(agent.agent_id, digest)
        body = AgentDeployment(manifest=manifest, sequence=served.sequence)
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
        agent_id = authenticated_agent(request).agent_id
        signals: AgentSignals = request.app.state.agent_signals
        signals.forget(agent_id)  # the agent acted: decide in full
        await request.app.state.reports.submit(agent_id, data)
        signals.forget(agent_id)  # and not on what a poll read before the report was applied

    @get(
        "/bundles/{digest:str}",
        opt={"scope": "agent:deployment"},
        media_type="application/gzip",
        summary="Download a bundle archive deployed to this agent",
    )
    async def bundle(
        self,
        request: Request[Any, Any, Any],
        blobs: Blobs,
        agent_id: FromPath[str],
        digest: FromPath[str],
    ) -> Response[bytes] | File:
        agent_id = authenticated_agent(request).agent_id
        grants: BundleGrants = request.app.state.bundle_grants
        # Handed out by a poll here just now (the usual case in a rollout): no query at all.
        if not grants.granted(agent_id, digest):
            session = request_session(request.scope, request.app.state.database)
            deployed = await session.scalar(
                select(DeploymentTargetRow.bundle_id)
                .where(
                    DeploymentTargetRow.agent_id == agent_id,
                    DeploymentTargetRow.bundle_digest == digest,
                )
                .limit(1)
            )
            # The pooled connection goes back before the archive streams: the read must not be
            # held for as long as a slow host reads.
            await session.rollback()
            if deployed is None:
                raise NotFound(f"No bundle {digest} was deployed to this agent")
            grants.grant(agent_id, digest)
        # A bundle is small and a whole fleet fetches the same one at once: from memory, with
        # no thread hop (see controlplane.blobs.store); a large one streams from disk.
        small = blobs.read_small(digest)
        if small is not None:
            return Response(
                small,
                media_type="application/gzip",
                headers={
                    "ETag": f'"{digest}"',  # named by its content: the digest is a strong tag
                    "Content-Disposition": f'attachment; filename="{digest.partition(":")[2]}"',
                },
            )
        if not blobs.exists(digest):
            raise NotFound(f"No bundle {digest} was deployed to this agent")
        return File(path=blobs.path_for(digest), media_type="application/gzip")
