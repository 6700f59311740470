"""Agent routes: operators under the environment, agents under ``/api/v1/agents/{agent_id}``."""

from __future__ import annotations

import time
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.params import FromPath, HeaderParameter, JSONBody, QueryParameter
from litestar.response import File
from sqlalchemy import select

from controlplane.agents import enrollment, service
from controlplane.auth.principal import AgentPrincipal, EnrollmentCredential
from controlplane.db.models import DeploymentTargetRow
from controlplane.deployments.rollout import apply_report, latest_target
from controlplane.deps import Blobs, Caller, DbSession, Kek, Paging, Where
from controlplane.errors import NotFound
from controlplane.signing.service import current_keyset
from shared.agents import (
    AgentRecord,
    EnrollRequest,
    EnrollResponse,
    Heartbeat,
    HeartbeatResponse,
    IdentityKey,
)
from shared.agents_admin import (
    AgentKeyRotated,
    EnrollmentToken,
    EnrollmentTokenCreate,
    EnrollmentTokenCreated,
)
from shared.deployments import AgentDeployment, DeploymentReport
from shared.resources import Page
from shared.signing import Envelope

__all__ = ["AgentAdminController", "AgentRuntimeController", "EnrollmentTokenController"]

ENV = "/api/v1/orgs/{org_id:str}/projects/{project_id:str}/environments/{env_id:str}"


def _agent(request: Request[Any, Any, Any]) -> AgentPrincipal:
    user = request.scope.get("user")
    if not isinstance(user, AgentPrincipal):  # pragma: no cover - middleware guarantees it
        raise TypeError("route has no authenticated agent")
    return user


class EnrollmentTokenController(Controller):
    path = ENV + "/enrollment-tokens"
    tags = ["agents"]

    @post("/", summary="Create an enrollment token; shown once (admin)")
    async def create_token(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        data: JSONBody[EnrollmentTokenCreate | None] = None,
    ) -> EnrollmentTokenCreated:
        created, token = await enrollment.create_token(
            session, caller, where, data or EnrollmentTokenCreate()
        )
        return EnrollmentTokenCreated(
            id=created.id, token=token, expires_at=created.expires_at, max_uses=created.max_uses
        )

    @get("/", summary="List enrollment tokens, without secrets (admin)")
    async def list_tokens(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
    ) -> list[EnrollmentToken]:
        return await enrollment.list_tokens(session, caller, where)

    @delete("/{token_id:str}", summary="Revoke an enrollment token (admin)")
    async def revoke_token(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        token_id: FromPath[str],
    ) -> None:
        await enrollment.revoke_token(session, caller, where, token_id)


class AgentAdminController(Controller):
    path = ENV + "/agents"
    tags = ["agents"]

    @post(
        "/",
        opt={"credential": "enrollment"},
        summary="Enroll an agent with an enrollment token; returns its runtime key once",
        security=[{"enrollment": []}],
    )
    async def enroll(
        self,
        request: Request[Any, Any, Any],
        session: DbSession,
        kek: Kek,
        where: Where,
        data: JSONBody[EnrollRequest | None] = None,
    ) -> EnrollResponse:
        credential = request.scope.get("user")
        assert isinstance(credential, EnrollmentCredential)  # noqa: S101 - middleware contract
        enrollments = request.app.state.metrics.enrollments
        try:
            enrolled = await enrollment.enroll(
                session,
                kek,
                credential.token,
                where.org_id,
                where.project_id,
                where.env_id,
                data or EnrollRequest(),
            )
        except Exception:
            enrollments.labels("refused").inc()
            raise
        enrollments.labels("enrolled").inc()
        return enrolled

    @get("/", summary="List agents with status from heartbeat age (viewer)")
    async def list_agents(
        self,
        state: State,
        session: DbSession,
        caller: Caller,
        where: Where,
        page: Paging,
    ) -> Page[AgentRecord]:
        return await service.list_agents(
            session,
            caller,
            where,
            page,
            state.settings,
            state.heartbeats,
        )

    @get("/{agent_id:str}", summary="Get an agent (viewer)")
    async def get_agent(
        self,
        state: State,
        session: DbSession,
        caller: Caller,
        where: Where,
        agent_id: FromPath[str],
    ) -> AgentRecord:
        return await service.get_agent(
            session,
            caller,
            where,
            agent_id,
            state.settings,
            state.heartbeats,
        )

    @delete("/{agent_id:str}", summary="Delete an agent, revoking its key (admin)")
    async def delete_agent(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        agent_id: FromPath[str],
    ) -> None:
        await service.delete_agent(session, caller, where, agent_id)

    @post(
        "/{agent_id:str}/rotate-key",
        status_code=202,
        summary="Issue a new agent key, delivered on the agent's next heartbeat (admin)",
    )
    async def rotate_key(
        self,
        session: DbSession,
        caller: Caller,
        kek: Kek,
        where: Where,
        agent_id: FromPath[str],
    ) -> AgentKeyRotated:
        return await service.request_key_rotation(session, caller, where, agent_id, kek)


class AgentRuntimeController(Controller):
    path = "/api/v1/agents/{agent_id:str}"
    tags = ["agent runtime"]
    opt = {"credential": "agent"}
    security = [{"agent_key": []}]

    @get("/", summary="The agent's own record (agent key)")
    async def own_record(
        self,
        request: Request[Any, Any, Any],
        state: State,
        session: DbSession,
        agent_id: FromPath[str],
    ) -> AgentRecord:
        return await service.own_record(session, _agent(request), state.settings, state.heartbeats)

    @put(
        "/identity-key",
        status_code=200,
        opt={"scope": "agent:artifact_upload"},
        summary="Register the agent's artifact-signing public key (once; same key again is a no-op)",
        description=(
            "Agents enrolled with a token sent it at enrollment; agents run on pre-provisioned "
            "credentials register it here before their first upload. Another key than the one "
            "registered is a 409: delete the agent and enroll the host again."
        ),
    )
    async def identity_key(
        self,
        request: Request[Any, Any, Any],
        session: DbSession,
        agent_id: FromPath[str],
        data: JSONBody[IdentityKey],
    ) -> IdentityKey:
        return await service.register_identity_key(session, _agent(request), data)

    @post(
        "/heartbeat",
        status_code=200,
        opt={"scope": "agent:heartbeat"},
        summary="Report liveness and resource usage; learn the next interval and what awaits",
    )
    async def heartbeat(
        self,
        request: Request[Any, Any, Any],
        state: State,
        session: DbSession,
        kek: Kek,
        agent_id: FromPath[str],
        data: JSONBody[Heartbeat],
    ) -> HeartbeatResponse:
        state.metrics.heartbeats.inc()
        return await service.receive_heartbeat(
            session, _agent(request), data, state.settings, state.heartbeats, kek
        )

    @get(
        "/deployment",
        opt={"scope": "agent:deployment"},
        summary="The newest deployment manifest for this agent (long-poll with ?wait=, ETag)",
        description=(
            "With `If-None-Match` equal to the current ETag the request waits up to `wait` "
            "seconds (bounded) for a newer manifest, then answers 304."
        ),
    )
    async def deployment(
        self,
        request: Request[Any, Any, Any],
        state: State,
        session: DbSession,
        agent_id: FromPath[str],
        wait: Annotated[float, QueryParameter(ge=0, le=3600)] = 0,
        if_none_match: Annotated[str | None, HeaderParameter(name="If-None-Match")] = None,
    ) -> Response[Any]:
        agent = _agent(request)
        deadline = time.monotonic() + min(wait, state.settings.long_poll_max_seconds)
        while True:
            target = await latest_target(session, agent.agent_id)
            sequence = target.sequence if target else 0
            manifest = target.manifest if target else None
            etag = f'"seq-{sequence}"'
            await session.rollback()  # never hold a transaction while waiting
            remaining = deadline - time.monotonic()
            if if_none_match != etag or remaining <= 0:
                break
            await state.agent_signals.wait(agent.agent_id, timeout=min(1.0, remaining))
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
        request: Request[Any, Any, Any],
        state: State,
        session: DbSession,
        kek: Kek,
        agent_id: FromPath[str],
        data: JSONBody[DeploymentReport],
    ) -> None:
        await apply_report(session, kek, state.settings, _agent(request).agent_id, data)
        state.agent_signals.notify([])

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
                DeploymentTargetRow.agent_id == _agent(request).agent_id,
                DeploymentTargetRow.bundle_digest == digest,
            )
            .limit(1)
        )
        if deployed is None or not blobs.exists(digest):
            raise NotFound(f"No bundle {digest} was deployed to this agent")
        return File(path=blobs.path_for(digest), media_type="application/gzip")

    @get(
        "/signing-key",
        opt={"scope": "agent:signing_key"},
        summary="The organization's signed public key set (agent key)",
    )
    async def signing_key(
        self, request: Request[Any, Any, Any], session: DbSession, kek: Kek, agent_id: FromPath[str]
    ) -> Response[Envelope]:
        keyset = await current_keyset(session, kek, _agent(request).org_id)
        await session.commit()
        return Response(keyset)
