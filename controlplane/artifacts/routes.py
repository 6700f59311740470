"""Agent upload route and ``…/environments/{env_id}/artifacts`` for operators."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody, QueryParameter
from litestar.response import File

from controlplane.artifacts import replays, service
from controlplane.artifacts.upload import MAX_UPLOAD_BODY, receive_upload
from controlplane.deps import (
    Blobs,
    Caller,
    DbSession,
    JobQueue,
    Paging,
    Where,
    authenticated_agent,
    worker_wake,
)
from shared.artifacts import ArtifactReceipt
from shared.artifacts_api import Artifact, Replay, ReplayCreate
from shared.resources import Page

__all__ = ["ArtifactController", "upload_artifact"]

ENV = "/api/v1/orgs/{org_id:str}/projects/{project_id:str}/environments/{env_id:str}"
Text = Annotated[str | None, QueryParameter(max_length=64)]
Moment = Annotated[datetime | None, QueryParameter(description="RFC 3339 time")]


@post(
    "/api/v1/agents/{agent_id:str}/artifacts",
    opt={"credential": "agent", "scope": "agent:artifact_upload"},
    request_max_body_size=MAX_UPLOAD_BODY,
    tags=["agent runtime"],
    security=[{"agent_key": []}],
    summary="Upload an artifact: multipart metadata (signed) then file; 64 MiB at most",
    description=(
        "201 for a new artifact, 200 with the existing one when the idempotency key or the "
        "digest was already uploaded by this agent. 413 while streaming past 64 MiB; 400 for a "
        "digest mismatch or a metadata signature that is not this agent's."
    ),
)
async def upload_artifact(
    request: Request[Any, Any, Any], state: State, blobs: Blobs, agent_id: FromPath[str]
) -> Response[ArtifactReceipt]:
    agent = authenticated_agent(request)
    receipt, created = await receive_upload(
        request, state.database, blobs, agent, wake=worker_wake(state)
    )
    if created:
        state.metrics.artifact_bytes.inc(int(request.headers.get("content-length") or 0))
    return Response(receipt, status_code=201 if created else 200)


class ArtifactController(Controller):
    path = ENV + "/artifacts"
    tags = ["artifacts"]

    @get("/", summary="List artifacts, filtered by agent, kind, status and capture time (viewer)")
    async def list_artifacts(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        page: Paging,
        agent_id: Text = None,
        kind: Text = None,
        status: Text = None,
        since: Moment = None,
        until: Moment = None,
    ) -> Page[Artifact]:
        filters = service.ArtifactFilters(agent_id, kind, status, since, until)
        return await service.list_artifacts(session, caller, where, page, filters)

    @get("/{artifact_id:str}", summary="An artifact with its ingest result (viewer)")
    async def get_artifact(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        artifact_id: FromPath[str],
    ) -> Artifact:
        return await service.get_artifact(session, caller, where, artifact_id)

    @post(
        "/{artifact_id:str}/replay",
        status_code=202,
        summary="Replay an incident deterministically through its pipeline version (deployer)",
        description=(
            "dry_run never needs an approval; execute needs one from the approver role where "
            "the environment requires approvals (the replay waits in pending_approval)."
        ),
    )
    async def replay(
        self,
        state: State,
        session: DbSession,
        caller: Caller,
        where: Where,
        jobs: JobQueue,
        artifact_id: FromPath[str],
        data: JSONBody[ReplayCreate | None] = None,
    ) -> Replay:
        return await replays.request_replay(
            session, caller, where, artifact_id, data or ReplayCreate(), jobs
        )

    @get("/{artifact_id:str}/replays/{replay_id:str}", summary="A replay and its audit (viewer)")
    async def get_replay(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        artifact_id: FromPath[str],
        replay_id: FromPath[str],
    ) -> Replay:
        return await replays.get_replay(session, caller, where, artifact_id, replay_id)

    @post(
        "/{artifact_id:str}/replays/{replay_id:str}/approve",
        status_code=200,
        summary="Approve an execute replay (the environment's approver role)",
    )
    async def approve_replay(
        self,
        state: State,
        session: DbSession,
        caller: Caller,
        where: Where,
        jobs: JobQueue,
        artifact_id: FromPath[str],
        replay_id: FromPath[str],
    ) -> Replay:
        return await replays.approve_replay(session, caller, where, artifact_id, replay_id, jobs)

    @get(
        "/{artifact_id:str}/content",
        summary="Download an artifact's bytes (streamed) (viewer)",
        media_type="application/octet-stream",
    )
    async def content(
        self,
        session: DbSession,
        caller: Caller,
        blobs: Blobs,
        where: Where,
        artifact_id: FromPath[str],
    ) -> File:
        artifact = await service.get_artifact(session, caller, where, artifact_id)
        return File(
            path=blobs.path_for(artifact.digest),
            filename=artifact.filename,
            media_type="application/octet-stream",
            headers={"ETag": f'"{artifact.digest}"'},
        )
