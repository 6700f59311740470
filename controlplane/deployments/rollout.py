"""Rollouts: build the bundle, issue signed manifests, follow agent reports, roll back.

All of this is level-triggered and safe to repeat: the rollout job re-reads the deployment and
acts only on what its status still calls for, and reconciliation recomputes a deployment's status
from its targets' reported states.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import select

from controlplane.bundles.service import build_bundle_now, new_bundle_row
from controlplane.db.models import (
    AgentRow,
    ApprovalRow,
    ConfigBundleRow,
    DeploymentRow,
    DeploymentTargetRow,
    EnvironmentRow,
    PipelineVersionRow,
)
from controlplane.db.types import utcnow
from controlplane.deployments.lifecycle import Status, transition
from controlplane.errors import Conflict, NotFound
from controlplane.jobs import PermanentJobError, enqueue
from controlplane.signing.service import sign_for_org
from shared.deployments import DeploymentReport, ManifestApproval, ManifestPayload

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.jobs import JobContext
    from controlplane.settings import Settings
    from controlplane.signing.kek import KeyEncryptionKey

__all__ = [
    "DEADLINE_JOB",
    "ROLLOUT_JOB",
    "SYSTEM",
    "apply_report",
    "enforce_deadline",
    "latest_target",
    "run_rollout",
    "start_rollback",
]

logger = logging.getLogger("byteor.controlplane.deployments")

ROLLOUT_JOB = "deployment.rollout"
DEADLINE_JOB = "deployment.deadline"
SYSTEM = "system"
DEPLOY = "deploy"
ROLLBACK = "rollback"
DONE = frozenset({"active", "failed", "rolled_back"})


async def _deployment_for_update(session: AsyncSession, deployment_id: str) -> DeploymentRow | None:
    return await session.scalar(
        select(DeploymentRow).where(DeploymentRow.id == deployment_id).with_for_update()
    )


async def _ready_bundle(session: AsyncSession, context: JobContext, deployment_id: str) -> str:
    """The id of the deployment's bundle, created and built first if needed."""
    deployment = await session.get(DeploymentRow, deployment_id)
    if deployment is None:
        raise PermanentJobError(f"deployment {deployment_id} is gone")
    bundle = (
        await session.get(ConfigBundleRow, deployment.config_bundle_id)
        if deployment.config_bundle_id
        else None
    )
    if bundle is None:
        env = await session.get(EnvironmentRow, deployment.env_id)
        version = await session.get(PipelineVersionRow, deployment.pipeline_version_id)
        if env is None or version is None:
            raise PermanentJobError("the environment or pipeline version is gone")
        bundle = await new_bundle_row(session, env, version, deployment.requested_by)
        deployment.config_bundle_id = bundle.id
    bundle_id, ready = bundle.id, bundle.status == "ready"
    # End this transaction first: on SQLite the build's own transaction would wait on it.
    await session.commit()
    if not ready:
        await build_bundle_now(context, bundle_id)
    session.expire_all()
    return bundle_id


async def previous_bundle_of(session: AsyncSession, agent_id: str, before: int) -> str | None:
    """The bundle this agent last confirmed running before manifest ``before``."""
    return await session.scalar(
        select(DeploymentTargetRow.bundle_id)
        .where(
            DeploymentTargetRow.agent_id == agent_id,
            DeploymentTargetRow.sequence < before,
            DeploymentTargetRow.status.in_(["active", "rolled_back"]),
        )
        .order_by(DeploymentTargetRow.sequence.desc())
        .limit(1)
    )


async def issue_manifest(
    session: AsyncSession,
    kek: KeyEncryptionKey,
    settings: Settings,
    deployment: DeploymentRow,
    agent: AgentRow,
    bundle: ConfigBundleRow,
    phase: str,
) -> DeploymentTargetRow:
    """Sign a manifest with the agent's next sequence and record the target (no commit)."""
    locked = await session.scalar(select(AgentRow).where(AgentRow.id == agent.id).with_for_update())
    if locked is None:  # pragma: no cover - callers pass live agents
        raise NotFound(f"No agent {agent.id}")
    locked.manifest_sequence += 1
    now = utcnow()
    payload = ManifestPayload(
        deployment_id=deployment.id,
        agent_id=agent.id,
        org_id=deployment.org_id,
        environment_id=deployment.env_id,
        sequence=locked.manifest_sequence,
        bundle_id=bundle.id,
        bundle_digest=bundle.digest or "",
        bundle_size=bundle.size or 0,
        spec_hash=bundle.spec_hash,
        issued_at=int(now.timestamp()),
        expires_at=int(now.timestamp()) + settings.manifest_ttl_seconds,
        action="rollback" if phase == ROLLBACK else "deploy",
        approvals=[
            ManifestApproval(
                approval_id=a.id,
                approver_id=a.decided_by or "",
                decided_at=int(a.decided_at.timestamp()) if a.decided_at else 0,
            )
            for a in await session.scalars(
                select(ApprovalRow)
                .where(ApprovalRow.deployment_id == deployment.id, ApprovalRow.status == "approved")
                .order_by(ApprovalRow.id)
            )
        ],
    )
    envelope = await sign_for_org(session, kek, deployment.org_id, msgspec.to_builtins(payload))
    previous = None
    if phase == DEPLOY:
        previous = await previous_bundle_of(session, agent.id, locked.manifest_sequence)
    target = DeploymentTargetRow(
        deployment_id=deployment.id,
        agent_id=agent.id,
        phase=phase,
        bundle_id=bundle.id,
        bundle_digest=bundle.digest or "",
        sequence=locked.manifest_sequence,
        status="issued",
        manifest=msgspec.to_builtins(envelope),
        previous_bundle_id=previous,
    )
    session.add(target)
    return target


async def run_rollout(context: JobContext, payload: dict[str, Any]) -> None:
    """Job: ``approved -> building -> deploying`` with one signed manifest per target agent."""
    deployment_id = str(payload.get("deployment_id", ""))
    async with context.database.sessionmaker() as session:
        deployment = await _deployment_for_update(session, deployment_id)
        if deployment is None or deployment.status not in (Status.APPROVED, Status.BUILDING):
            return
        transition(session, deployment, Status.BUILDING, actor=SYSTEM, reason="building the bundle")
        await session.commit()
        try:
            bundle_id = await _ready_bundle(session, context, deployment_id)
        except Exception as exc:
            if isinstance(exc, PermanentJobError) or context.final_attempt:
                await session.rollback()
                deployment = await _deployment_for_update(session, deployment_id)
                if deployment is not None and deployment.status == Status.BUILDING:
                    transition(
                        session,
                        deployment,
                        Status.FAILED,
                        actor=SYSTEM,
                        reason=f"bundle build failed: {exc}",
                    )
                    await session.commit()
            raise
        deployment = await _deployment_for_update(session, deployment_id)
        if deployment is None or deployment.status != Status.BUILDING:
            return  # denied (an approval was revoked) while the bundle was building
        bundle = await session.get(ConfigBundleRow, bundle_id)
        if bundle is None or bundle.status != "ready":
            transition(
                session, deployment, Status.FAILED, actor=SYSTEM, reason="bundle build failed"
            )
            await session.commit()
            return
        agents = list(
            await session.scalars(
                select(AgentRow).where(
                    AgentRow.id.in_(deployment.agent_ids), AgentRow.env_id == deployment.env_id
                )
            )
        )
        for agent in sorted(agents, key=lambda a: a.id):
            await issue_manifest(
                session, context.kek, context.settings, deployment, agent, bundle, DEPLOY
            )
        deadline = utcnow() + timedelta(seconds=context.settings.rollout_timeout_seconds)
        deployment.rollout_deadline_at = deadline
        transition(
            session,
            deployment,
            Status.DEPLOYING,
            actor=SYSTEM,
            reason=f"manifests issued to {len(agents)} agent(s)",
        )
        await enqueue(
            session,
            DEADLINE_JOB,
            {"deployment_id": deployment.id},
            dedupe_key=f"{DEADLINE_JOB}:{deployment.id}",
            delay=timedelta(seconds=context.settings.rollout_timeout_seconds),
        )
        await session.commit()
        if context.signals is not None:
            context.signals.notify(a.id for a in agents)
        logger.info("deployment %s deploying to %d agent(s)", deployment.id, len(agents))


async def start_rollback(
    session: AsyncSession,
    kek: KeyEncryptionKey,
    settings: Settings,
    deployment: DeploymentRow,
    *,
    actor: str,
    reason: str,
) -> None:
    """``-> rolling_back``: a new manifest per target pointing at its previous bundle (no commit).

    Idempotent: a deployment already rolling back gets no second set of manifests.
    """
    if not transition(session, deployment, Status.ROLLING_BACK, actor=actor, reason=reason):
        return
    targets = list(
        await session.scalars(
            select(DeploymentTargetRow)
            .where(
                DeploymentTargetRow.deployment_id == deployment.id,
                DeploymentTargetRow.phase == DEPLOY,
            )
            .order_by(DeploymentTargetRow.agent_id)  # the same lock order as the rollout
        )
    )
    issued = 0
    for target in targets:
        if target.previous_bundle_id is None:
            continue
        bundle = await session.get(ConfigBundleRow, target.previous_bundle_id)
        agent = await session.get(AgentRow, target.agent_id)
        if bundle is None or agent is None or bundle.status != "ready":
            continue
        await issue_manifest(session, kek, settings, deployment, agent, bundle, ROLLBACK)
        issued += 1
    if issued == 0:
        transition(
            session,
            deployment,
            Status.ROLLED_BACK,
            actor=SYSTEM,
            reason="no agent had a previous bundle to restore",
        )


async def _fail(
    session: AsyncSession,
    kek: KeyEncryptionKey,
    settings: Settings,
    deployment: DeploymentRow,
    reason: str,
) -> None:
    transition(session, deployment, Status.FAILED, actor=SYSTEM, reason=reason)
    env = await session.get(EnvironmentRow, deployment.env_id)
    if env is not None and env.rollback_policy == "automatic":
        await start_rollback(
            session, kek, settings, deployment, actor=SYSTEM, reason="automatic rollback: " + reason
        )


async def _reconcile(
    session: AsyncSession, kek: KeyEncryptionKey, settings: Settings, deployment: DeploymentRow
) -> None:
    targets = list(
        await session.scalars(
            select(DeploymentTargetRow).where(DeploymentTargetRow.deployment_id == deployment.id)
        )
    )
    if deployment.status == Status.DEPLOYING:
        deploy = [t for t in targets if t.phase == DEPLOY]
        failed = [t for t in deploy if t.status == "failed"]
        if failed:
            first = failed[0]
            await _fail(
                session,
                kek,
                settings,
                deployment,
                f"agent {first.agent_id}: {first.reason or 'failed'}",
            )
        elif deploy and all(t.status == "active" for t in deploy):
            transition(
                session, deployment, Status.ACTIVE, actor=SYSTEM, reason="every target is active"
            )
    elif deployment.status == Status.ROLLING_BACK:
        rollback = [t for t in targets if t.phase == ROLLBACK]
        if rollback and all(t.status in DONE for t in rollback):
            bad = [t for t in rollback if t.status == "failed"]
            reason = (
                "previous bundle restored on every target"
                if not bad
                else f"rollback failed on {len(bad)} agent(s); see targets"
            )
            transition(session, deployment, Status.ROLLED_BACK, actor=SYSTEM, reason=reason)


async def apply_report(
    session: AsyncSession,
    kek: KeyEncryptionKey,
    settings: Settings,
    agent_id: str,
    report: DeploymentReport,
) -> None:
    """Record an agent's progress on one manifest and reconcile the deployment (commits)."""
    deployment = await _deployment_for_update(session, report.deployment_id)
    target = await session.scalar(
        select(DeploymentTargetRow).where(
            DeploymentTargetRow.deployment_id == report.deployment_id,
            DeploymentTargetRow.agent_id == agent_id,
            DeploymentTargetRow.sequence == report.sequence,
        )
    )
    if deployment is None or target is None:
        raise NotFound(
            f"No manifest {report.sequence} of deployment {report.deployment_id} for this agent"
        )
    if target.status in DONE:
        if target.status != report.status:
            raise Conflict(f"Manifest {report.sequence} was already reported {target.status}")
        return
    if report.status == "activating":
        target.status = "activating"
    elif target.phase == DEPLOY and report.status in ("active", "failed"):
        target.status = report.status
    elif target.phase == ROLLBACK and report.status in ("rolled_back", "active", "failed"):
        target.status = "rolled_back" if report.status == "active" else report.status
    else:
        raise Conflict(f"A {target.phase} manifest cannot be reported {report.status}")
    target.reason = report.reason
    await _reconcile(session, kek, settings, deployment)
    await session.commit()


async def enforce_deadline(context: JobContext, payload: dict[str, Any]) -> None:
    """Job: a deployment still ``deploying`` after its deadline fails (and may roll back)."""
    async with context.database.sessionmaker() as session:
        deployment = await _deployment_for_update(session, str(payload.get("deployment_id", "")))
        if deployment is None or deployment.status != Status.DEPLOYING:
            return
        deadline = deployment.rollout_deadline_at
        if deadline is not None and deadline > utcnow():
            raise RuntimeError("deadline not reached yet; retrying later")
        await _fail(session, context.kek, context.settings, deployment, "rollout deadline passed")
        await session.commit()


async def latest_target(session: AsyncSession, agent_id: str) -> DeploymentTargetRow | None:
    """The newest manifest issued to this agent."""
    return await session.scalar(
        select(DeploymentTargetRow)
        .where(DeploymentTargetRow.agent_id == agent_id)
        .order_by(DeploymentTargetRow.sequence.desc())
        .limit(1)
    )
