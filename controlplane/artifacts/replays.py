"""Replays: request (deployer), approve ``execute`` in gated environments (approver), run as a job."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import select

from controlplane.artifacts.ingest import read_incident_bundle
from controlplane.artifacts.service import artifact_row
from controlplane.db.models import ArtifactRow, EnvironmentRow, PipelineVersionRow, ReplayRow
from controlplane.errors import Conflict, Forbidden, Invalid, NotFound
from controlplane.jobs import Jobs, PermanentJobError
from controlplane.orgs.access import authorize
from shared.artifacts_api import Replay, ReplayCreate
from shared.ids import new_id
from shared.replay import encode_audit, parse_journal, replay_audit
from shared.roles import Role
from shared.spec import parse_spec_kv

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.auth.principal import Principal
    from controlplane.jobs import JobContext
    from controlplane.orgs.paths import EnvPath

__all__ = ["REPLAY_JOB", "approve_replay", "get_replay", "request_replay", "run_replay"]

REPLAY_JOB = "replay.run"


def replay_schema(row: ReplayRow) -> Replay:
    return Replay(
        id=row.id,
        artifact_id=row.artifact_id,
        environment_id=row.env_id,
        pipeline_version_id=row.pipeline_version_id,
        mode=row.mode,
        last_n=row.last_n,
        status=row.status,
        requested_by=row.requested_by,
        approved_by=row.approved_by,
        audit=json.loads(row.audit) if row.audit else None,
        audit_sha256=row.audit_sha256,
        error=row.error,
        created_at=row.created_at,
    )


async def request_replay(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    artifact_id: str,
    data: ReplayCreate,
    jobs: Jobs,
) -> Replay:
    """Create a replay; ``execute`` waits for an approval where the environment requires them."""
    env = await where.resolve(session, caller, Role.DEPLOYER)
    artifact = await artifact_row(session, env.id, artifact_id)
    if artifact.kind != "incident":
        raise Invalid("Only incident bundles can be replayed")
    if artifact.status == "received":
        raise Conflict("The artifact is still being ingested; retry in a moment")
    version_id = artifact.pipeline_version_id
    if version_id is None and artifact.spec_hash:
        version_id = await session.scalar(
            select(PipelineVersionRow.id)
            .where(
                PipelineVersionRow.env_id == env.id,
                PipelineVersionRow.spec_hash == artifact.spec_hash,
            )
            .order_by(PipelineVersionRow.id.desc())
            .limit(1)
        )
    if version_id is None:
        raise NotFound(
            f"No pipeline version of this environment has spec hash {artifact.spec_hash or '(none)'}"
        )
    gated = data.mode == "execute" and env.approvals_required > 0
    row = ReplayRow(
        id=new_id("rpl"),
        org_id=env.org_id,
        env_id=env.id,
        artifact_id=artifact.id,
        pipeline_version_id=version_id,
        mode=data.mode,
        last_n=data.last_n,
        status="pending_approval" if gated else "queued",
        requested_by=caller.user_id,
    )
    session.add(row)
    await session.flush()
    if not gated:
        await jobs.enqueue(REPLAY_JOB, {"replay_id": row.id}, dedupe_key=f"{REPLAY_JOB}:{row.id}")
    await session.commit()
    return replay_schema(row)


async def _replay_row(
    session: AsyncSession, env_id: str, artifact_id: str, replay_id: str
) -> ReplayRow:
    row = await session.scalar(
        select(ReplayRow).where(
            ReplayRow.id == replay_id,
            ReplayRow.env_id == env_id,
            ReplayRow.artifact_id == artifact_id,
        )
    )
    if row is None:
        raise NotFound(f"No replay {replay_id} of artifact {artifact_id}")
    return row


async def get_replay(
    session: AsyncSession, caller: Principal, where: EnvPath, artifact_id: str, replay_id: str
) -> Replay:
    env = await where.resolve(session, caller, Role.VIEWER)
    return replay_schema(await _replay_row(session, env.id, artifact_id, replay_id))


async def approve_replay(
    session: AsyncSession,
    caller: Principal,
    where: EnvPath,
    artifact_id: str,
    replay_id: str,
    jobs: Jobs,
) -> Replay:
    """Approve an ``execute`` replay (the environment's approver role; not one's own request)."""
    env = await where.resolve(session, caller, Role.VIEWER)
    role = await authorize(session, caller, env.org_id, Role.VIEWER)
    if not role.at_least(Role(env.approver_role)):
        raise Forbidden(f"Approving here needs the {env.approver_role} role; you are {role.value}")
    row = await _replay_row(session, env.id, artifact_id, replay_id)
    if row.requested_by == caller.user_id and not env.allow_self_approval:
        raise Forbidden("You requested this replay; this environment does not allow self-approval")
    if row.status != "pending_approval":
        raise Conflict(f"Replay {replay_id} is {row.status}, not pending approval")
    row.status = "queued"
    row.approved_by = caller.user_id
    await jobs.enqueue(REPLAY_JOB, {"replay_id": row.id}, dedupe_key=f"{REPLAY_JOB}:{row.id}")
    await session.commit()
    return replay_schema(row)


async def run_replay(context: JobContext, payload: dict[str, Any]) -> None:
    """Job: build the replay audit v1 and store it with its SHA-256 (idempotent)."""
    replay_id = str(payload.get("replay_id", ""))
    async with context.database.sessionmaker() as session:
        row = await session.get(ReplayRow, replay_id)
        if row is None or row.status not in ("queued", "running"):
            return
        artifact = await session.get(ArtifactRow, row.artifact_id)
        version = await session.get(PipelineVersionRow, row.pipeline_version_id)
        env = await session.get(EnvironmentRow, row.env_id)
        if artifact is None or version is None or env is None:
            raise PermanentJobError("the artifact, version or environment is gone")
        digest, spec_kv, spec_digest = artifact.digest, version.spec_kv, version.spec_hash
        captured_ms = int(artifact.captured_at.timestamp() * 1000)
        mode: Literal["dry_run", "execute"] = "execute" if row.mode == "execute" else "dry_run"
        last_n, approved, env_id = row.last_n, row.approved_by is not None, env.id
        await session.rollback()
    try:
        files, reasons = read_incident_bundle(context.blobs.read_bytes(digest))
        if not files:
            raise PermanentJobError("; ".join(reasons) or "the bundle is empty")  # noqa: TRY301
        records, _problems = parse_journal(files.get("journal.jsonl", b""))
        audit = replay_audit(
            plan=parse_spec_kv(spec_kv),
            spec_hash=spec_digest,
            records=records,
            mode=mode,
            last_n=last_n,
            environment_id=env_id,
            approval_provided=approved,
            created_unix_ms=captured_ms,
        )
        encoded = encode_audit(audit)
        error = None
    except PermanentJobError as exc:
        encoded, error = None, str(exc)
    async with context.database.sessionmaker() as session:
        row = await session.get(ReplayRow, replay_id)
        if row is None:
            return
        if encoded is None:
            row.status, row.error = "failed", error
        else:
            row.status = "completed"
            row.audit = encoded.decode()
            row.audit_sha256 = "sha256:" + hashlib.sha256(encoded).hexdigest()
        await session.commit()
