"""``…/environments/{env_id}/config-bundles`` and ``…/environments/{env_id}/runtime-config``."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody
from litestar.response import File

from controlplane.bundles import service
from controlplane.deps import Blobs, Caller, DbSession, JobQueue, Paging, Where
from controlplane.errors import Conflict
from shared.pipelines import ConfigBundle, ConfigBundleCreate, RuntimeConfigPreview
from shared.resources import Page

__all__ = ["ConfigBundleController"]

ENV = "/api/v1/orgs/{org_id:str}/projects/{project_id:str}/environments/{env_id:str}"


class ConfigBundleController(Controller):
    path = ENV
    tags = ["config bundles"]

    @get("/config-bundles", summary="List config bundles (viewer)")
    async def list_bundles(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        page: Paging,
    ) -> Page[ConfigBundle]:
        return await service.list_bundles(session, caller, where, page)

    @post(
        "/config-bundles",
        status_code=202,
        summary="Build a signed config bundle for a pipeline version, as a job (deployer)",
        description=(
            "Answers 202 with the bundle in `building`; poll `GET …/config-bundles/{id}` until "
            "`ready` (digest, size and signature set) or `failed` (error set)."
        ),
    )
    async def create_bundle(
        self,
        request: Request[Any, Any, Any],
        state: State,
        session: DbSession,
        caller: Caller,
        where: Where,
        jobs: JobQueue,
        data: JSONBody[ConfigBundleCreate],
    ) -> Response[ConfigBundle]:
        bundle, _job_id = await service.request_bundle(
            session, caller, where, data.pipeline_version_id, jobs
        )
        location = f"{request.url.path.rstrip('/')}/{bundle.id}"
        return Response(bundle, status_code=202, headers={"Location": location})

    @get("/config-bundles/{bundle_id:str}", summary="Get a config bundle (viewer)")
    async def get_bundle(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
        bundle_id: FromPath[str],
    ) -> ConfigBundle:
        return await service.get_bundle(session, caller, where, bundle_id)

    @get(
        "/config-bundles/{bundle_id:str}/archive",
        summary="Download a ready bundle's archive (.tar.gz) (viewer)",
        media_type="application/gzip",
    )
    async def download_bundle(
        self,
        session: DbSession,
        caller: Caller,
        blobs: Blobs,
        where: Where,
        bundle_id: FromPath[str],
    ) -> File:
        bundle = await service.get_bundle(session, caller, where, bundle_id)
        if bundle.status != "ready" or bundle.digest is None:
            raise Conflict(f"Bundle {bundle_id} is {bundle.status}; its archive is not available")
        return File(
            path=blobs.path_for(bundle.digest),
            filename=f"{bundle.id}.tar.gz",
            media_type="application/gzip",
            headers={"ETag": f'"{bundle.digest}"'},
        )

    @get(
        "/runtime-config",
        summary="Preview the runtime config layers and their merge (viewer)",
        description=(
            "Layers merge organization < project < environment: objects merge recursively, a "
            "later scalar or array replaces the earlier value, and `null` deletes the key."
        ),
    )
    async def runtime_config(
        self,
        session: DbSession,
        caller: Caller,
        where: Where,
    ) -> RuntimeConfigPreview:
        return await service.preview_runtime_config(session, caller, where)
