"""Config bundles: request a build (a durable job), read records, preview the merged config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import select

from controlplane.bundles.archive import build_bundle_archive
from controlplane.db.models import (
    ConfigBundleRow,
    EnvironmentRow,
    OrganizationRow,
    PipelineVersionRow,
    ProjectRow,
)
from controlplane.db.types import utcnow
from controlplane.errors import NotFound
from controlplane.jobs import Jobs, PermanentJobError
from controlplane.pagination import fetch_page
from controlplane.pipelines.service import get_version_row
from controlplane.signing.service import sign_for_org
from shared.config import merge_layers
from shared.ids import new_id
from shared.pipelines import ConfigBundle, RuntimeConfigPreview
from shared.resources import Page
from shared.roles import Role
from shared.signing import Envelope

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.auth.principal import Principal
    from controlplane.jobs import JobContext
    from controlplane.orgs.paths import EnvPath
    from controlplane.pagination import PageRequest

__all__ = [
    "BUILD_JOB",
    "build_bundle",
    "build_bundle_now",
    "get_bundle",
    "list_bundles",
    "new_bundle_row",
    "preview_runtime_config",
    "request_bundle",
]

BUILD_JOB = "bundle.build"


async def new_bundle_row(
    session: AsyncSession, env: EnvironmentRow, version: PipelineVersionRow, created_by: str | None
) -> ConfigBundleRow:
    """Add a ``building`` bundle capturing the environment's posture now (flushes, no commit)."""
    posture = await _layers(session, env)
    row = ConfigBundleRow(
        id=new_id("cfb"),
        org_id=env.org_id,
        env_id=env.id,
        pipeline_version_id=version.id,
        status="building",
        spec_hash=version.spec_hash,
        tuning_profile=posture.tuning_profile,
        runtime_config=posture.merged,
        created_by=created_by,
    )
    session.add(row)
    await session.flush()
    return row


def bundle_schema(row: ConfigBundleRow) -> ConfigBundle:
    return ConfigBundle(
        id=row.id,
        org_id=row.org_id,
        environment_id=row.env_id,
        pipeline_version_id=row.pipeline_version_id,
        status=row.status,  # type: ignore[arg-type]
        spec_hash=row.spec_hash,
        tuning_profile=row.tuning_profile,
        runtime_config=row.runtime_config,
        digest=row.digest,
        size=row.size,
        signature=msgspec.convert(row.signature, Envelope) if row.signature else None,
        error=row.error,
        created_by=row.created_by,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def _layers(session: AsyncSession, env: EnvironmentRow) -> RuntimeConfigPreview:
    org = await session.get(OrganizationRow, env.org_id)
    project = await session.get(ProjectRow, env.project_id)
    org_layer: dict[str, Any] = org.runtime_config if org else {}
    project_layer: dict[str, Any] = project.runtime_config if project else {}
    return RuntimeConfigPreview(
        organization=org_layer,
        project=project_layer,
        environment=env.runtime_config,
        merged=merge_layers(org_layer, project_layer, env.runtime_config),
        tuning_profile=env.tuning_profile,
    )


async def preview_runtime_config(
    session: AsyncSession, caller: Principal, where: EnvPath
) -> RuntimeConfigPreview:
    env = await where.resolve(session, caller, Role.VIEWER)
    return await _layers(session, env)


async def request_bundle(
    session: AsyncSession, caller: Principal, where: EnvPath, version_id: str, jobs: Jobs
) -> tuple[ConfigBundle, str]:
    """Record a bundle in ``building`` and enqueue its build in the same transaction.

    The environment's posture (tuning profile, merged runtime config) is captured now, so the
    build is a pure function of the record and can be retried safely.
    """
    env = await where.resolve(session, caller, Role.DEPLOYER)
    version = await get_version_row(session, env.id, version_id)
    row = await new_bundle_row(session, env, version, caller.user_id)
    job_id = await jobs.enqueue(
        BUILD_JOB, {"bundle_id": row.id}, dedupe_key=f"{BUILD_JOB}:{row.id}"
    )
    await session.commit()
    return bundle_schema(row), job_id


async def list_bundles(
    session: AsyncSession, caller: Principal, where: EnvPath, page: PageRequest
) -> Page[ConfigBundle]:
    env = await where.resolve(session, caller, Role.VIEWER)
    statement = select(ConfigBundleRow).where(ConfigBundleRow.env_id == env.id)
    rows, cursor = await fetch_page(session, statement, ConfigBundleRow.id, page)
    return Page(items=[bundle_schema(r) for r in rows], next_cursor=cursor)


async def get_bundle(
    session: AsyncSession, caller: Principal, where: EnvPath, bundle_id: str
) -> ConfigBundle:
    env = await where.resolve(session, caller, Role.VIEWER)
    row = await session.scalar(
        select(ConfigBundleRow).where(
            ConfigBundleRow.id == bundle_id, ConfigBundleRow.env_id == env.id
        )
    )
    if row is None:
        raise NotFound(f"No config bundle {bundle_id} in environment {env.id}")
    return bundle_schema(row)


async def build_bundle(context: JobContext, payload: dict[str, Any]) -> None:
    """Job handler: build the archive, store it content-addressed, sign the record (idempotent).

    A permanent error, or an error on the last attempt, marks the bundle ``failed`` with the reason.
    """
    bundle_id = str(payload.get("bundle_id", ""))
    try:
        await _build(context, bundle_id)
    except Exception as exc:
        if isinstance(exc, PermanentJobError) or context.final_attempt:
            await mark_build_failed(context, bundle_id, f"{type(exc).__name__}: {exc}")
        raise


async def build_bundle_now(context: JobContext, bundle_id: str) -> None:
    """Build a bundle in the caller's job (a rollout that needs its bundle right away)."""
    await _build(context, bundle_id)


async def _build(context: JobContext, bundle_id: str) -> None:
    async with context.database.sessionmaker() as session:
        row = await session.get(ConfigBundleRow, bundle_id)
        if row is None or row.status == "ready":
            return  # deleted by a cascade meanwhile, or an earlier attempt finished
        version = await session.get(PipelineVersionRow, row.pipeline_version_id)
        if version is None:
            raise PermanentJobError(f"pipeline version {row.pipeline_version_id} is gone")
        archive = build_bundle_archive(
            org_id=row.org_id,
            environment_id=row.env_id,
            pipeline_version_id=version.id,
            spec_kv=version.spec_kv,
            spec_hash=version.spec_hash,
            tuning_profile=row.tuning_profile,
            runtime_config=row.runtime_config,
        )
        digest, size = context.blobs.put_bytes(archive)
        envelope = await sign_for_org(
            session,
            context.kek,
            row.org_id,
            {
                "kind": "config_bundle",
                "bundle_id": row.id,
                "org_id": row.org_id,
                "environment_id": row.env_id,
                "pipeline_version_id": version.id,
                "digest": digest,
                "size": size,
                "spec_hash": version.spec_hash,
                "tuning_profile": row.tuning_profile,
                "issued_at": int(utcnow().timestamp()),
            },
        )
        row.digest = digest
        row.size = size
        row.signature = msgspec.to_builtins(envelope)
        row.status = "ready"
        row.error = None
        await session.commit()


async def mark_build_failed(context: JobContext, bundle_id: str, reason: str) -> None:
    """Record a permanent build failure on the bundle."""
    async with context.database.sessionmaker() as session:
        row = await session.get(ConfigBundleRow, bundle_id)
        if row is not None and row.status == "building":
            row.status = "failed"
            row.error = reason
            await session.commit()
