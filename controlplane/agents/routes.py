"""Agent routes: operators under the environment, agents under ``/api/v1/agents/{agent_id}``."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

from controlplane.agents import enrollment, service
from controlplane.agents.fastlane import FAST_LANE
from controlplane.auth.principal import EnrollmentCredential
from controlplane.db.scoped import request_session
from controlplane.deps import Caller, DbSession, JobQueue, Kek, Paging, Where, authenticated_agent
from controlplane.request import ByteorRequest
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
from shared.resources import Page
from shared.signing import Envelope

__all__ = ["AgentAdminController", "AgentRuntimeController", "EnrollmentTokenController"]

ENV = "/api/v1/orgs/{org_id:str}/projects/{project_id:str}/environments/{env_id:str}"


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

    @delete(
        "/{agent_id:str}",
        summary="Delete an agent, revoking its key (admin)",
        description="In-flight deployments stop waiting for it and are re-evaluated.",
    )
    async def delete_agent(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        jobs: JobQueue,
        agent_id: FromPath[str],
    ) -> None:
        await service.delete_agent(session, caller, where, agent_id, jobs)

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
    async def own_record(self, request: ByteorRequest, agent_id: FromPath[str]) -> AgentRecord:
        state = request.app.state
        return await service.own_record(
            request_session(request.scope, state.database),
            authenticated_agent(request),
            state.settings,
            state.heartbeats,
            state.fleet,
        )

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
        return await service.register_identity_key(session, authenticated_agent(request), data)

    @post(
        "/heartbeat",
        status_code=200,
        opt={"scope": "agent:heartbeat", "transaction": "read", FAST_LANE: True},
        summary="Report liveness and resource usage; learn the next interval and what awaits",
    )
    async def heartbeat(
        self,
        request: ByteorRequest,
        agent_id: FromPath[str],
        data: JSONBody[Heartbeat],
    ) -> HeartbeatResponse:
        # The hot path of a fleet, so nothing for Litestar to resolve: two or more dependencies
        # are resolved in a task group, and a ``State`` parameter is a copy of the app's state
        # per request, each costing more than the rest of a warm heartbeat. The session opens
        # only if the agent has a rotated key waiting.
        state = request.app.state
        state.metrics.heartbeats.inc()
        return await service.receive_heartbeat(
            lambda: request_session(request.scope, state.database),
            authenticated_agent(request),
            data,
            state.settings,
            state.heartbeats,
            state.kek,
            state.fleet,
        )

    @get(
        "/signing-key",
        opt={"scope": "agent:signing_key"},
        summary="The organization's signed public key set (agent key)",
    )
    async def signing_key(
        self, request: ByteorRequest, agent_id: FromPath[str]
    ) -> Response[Envelope]:
        state = request.app.state
        session = request_session(request.scope, state.database)
        keyset = await current_keyset(session, state.kek, authenticated_agent(request).org_id)
        await session.commit()
        return Response(keyset)
