"""Rollouts: build the bundle, issue signed manifests, follow agent reports, roll back.

Everything here is level-triggered and safe to repeat: the rollout job re-reads the deployment
and acts only on what its status still calls for, and :func:`reconcile` recomputes a deployment's
status from its targets. A deployment's targets are the agents online when it starts rolling out
(offline ones converge later, see :mod:`controlplane.delivery.convergence`). When it becomes
``active`` it becomes the environment's current deployment; rolling back the current deployment
makes the one it replaced current again.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import func, select

from controlplane.agents.service import online_agent_ids
from controlplane.bundles.service import build_bundle_now, new_bundle_row
from controlplane.db.engine import FLEET, mark_changed
from controlplane.db.models import (
    FULL_DEPLOYMENT,
    AgentRow,
    ApprovalRow,
    ConfigBundleRow,
    DeploymentRow,
    DeploymentTargetRow,
    EnvironmentRow,
    PipelineVersionRow,
)
from controlplane.db.types import utcnow
from controlplane.db.values import one_of
from controlplane.delivery.lifecycle import move_target, transition
from controlplane.delivery.states import (
    UNFINISHED_TARGET,
    ApprovalStatus,
    DeploymentStatus,
    TargetPhase,
    TargetStatus,
)
from controlplane.environments.service import DesiredState, desired_state, set_desired_state
from controlplane.errors import Conflict, DomainError, NotFound
from controlplane.jobs import PermanentJobError
from controlplane.jobs.engine import enqueue
from controlplane.jobs.kinds import RECONCILE_ENVIRONMENT
from controlplane.signing.service import signing_keys
from shared.deployments import DeploymentReport, ManifestApproval, ManifestPayload
from shared.signing import sign_payload

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from litestar.datastructures import State
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.agents.heartbeats import HeartbeatBuffer
    from controlplane.jobs import JobContext
    from controlplane.settings import Settings
    from controlplane.signing.kek import KeyEncryptionKey
    from shared.signing import Envelope

__all__ = [
    "ROLLOUT_JOB",
    "SYSTEM",
    "Delivery",
    "apply_report",
    "become_current",
    "fail",
    "issue_manifest",
    "locked_deployment",
    "reconcile",
    "record_report",
    "record_reports",
    "run_rollout",
    "start_rollback",
]

logger = logging.getLogger("byteor.controlplane.delivery")

ROLLOUT_JOB = "deployment.rollout"
SYSTEM = "system"


class Delivery:
    """What the delivery functions need besides a session: keys, settings, heartbeats."""

    __slots__ = ("_signers", "heartbeats", "kek", "settings")

    def __init__(
        self, kek: KeyEncryptionKey, settings: Settings, heartbeats: HeartbeatBuffer | None
    ) -> None:
        self.kek = kek
        self.settings = settings
        self.heartbeats = heartbeats
        self._signers: dict[str, list[tuple[str, Ed25519PrivateKey]]] = {}

    async def sign(
        self, session: AsyncSession, org_id: str, payload: Mapping[str, Any]
    ) -> Envelope:
        """Sign with the organization's valid keys, read and unsealed once per request or job
        (a rollout signs a manifest per agent; the keys do not change within one)."""
        signers = self._signers.get(org_id)
        if signers is None:
            signers = await signing_keys(session, self.kek, org_id)
            self._signers[org_id] = signers
        return sign_payload(payload, signers)

    @classmethod
    def of(cls, context: JobContext) -> Delivery:
        return cls(context.kek, context.settings, context.heartbeats)

    @classmethod
    def of_app(cls, state: State) -> Delivery:
        """The ``delivery`` dependency of routes: this process's keys, settings, heartbeats."""
        return cls(state.kek, state.settings, state.heartbeats)

    def deadline(self, seconds: float) -> datetime:
        return utcnow() + timedelta(seconds=seconds)


async def locked_deployment(session: AsyncSession, deployment_id: str) -> DeploymentRow | None:
    """The deployment, whole and locked for this transaction (PostgreSQL; SQLite writes are
    serial)."""
    return await session.scalar(
        select(DeploymentRow)
        .where(DeploymentRow.id == deployment_id)
        .options(*FULL_DEPLOYMENT)
        .with_for_update()
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


async def issue_manifest(
    session: AsyncSession,
    delivery: Delivery,
    deployment: DeploymentRow,
    agent_id: str,
    bundle: ConfigBundleRow,
    phase: TargetPhase,
) -> DeploymentTargetRow | None:
    """Sign a manifest for one agent; see :func:`issue_manifests`."""
    issued = await issue_manifests(session, delivery, deployment, [agent_id], bundle, phase)
    return issued.get(agent_id)


#: Agents locked and issued per batch of statements (bounded ``IN`` lists).
_ISSUE_BATCH = 500


async def issue_manifests(
    session: AsyncSession,
    delivery: Delivery,
    deployment: DeploymentRow,
    agent_ids: list[str],
    bundle: ConfigBundleRow,
    phase: TargetPhase,
) -> dict[str, DeploymentTargetRow]:
    """Sign a manifest with each agent's next sequence and record it on its target (no commit).

    A target that already exists (a convergence retry) gets the fresh manifest and counts one
    more attempt. Agents that no longer exist are left out of the result. The work is done in
    a few statements per batch of agents, not several per agent: a rollout to thousands of
    hosts runs while the same event loop serves their heartbeats.
    """
    if not agent_ids:
        return {}
    mark_changed(session, FLEET)  # heartbeats of this process tell the agents at once
    approvals = list(
        await session.scalars(
            select(ApprovalRow)
            .where(
                ApprovalRow.deployment_id == deployment.id,
                ApprovalRow.status == ApprovalStatus.APPROVED,
            )
            .order_by(ApprovalRow.id)
        )
    )
    signed_approvals = [
        ManifestApproval(
            approval_id=a.id,
            approver_id=a.decided_by or "",
            decided_at=int(a.decided_at.timestamp()) if a.decided_at else 0,
        )
        for a in approvals
    ]
    issued: dict[str, DeploymentTargetRow] = {}
    # One lock order everywhere, across batches too: agents by id (the heartbeat writer locks
    # its batch in the same order; on PostgreSQL two orders deadlock).
    ordered = sorted(agent_ids)
    for offset in range(0, len(ordered), _ISSUE_BATCH):
        chunk = ordered[offset : offset + _ISSUE_BATCH]
        agents = list(
            await session.scalars(
                select(AgentRow)
                .where(one_of(session, AgentRow.id, chunk))
                .order_by(AgentRow.id)
                .with_for_update()
            )
        )
        existing = {
            target.agent_id: target
            for target in await session.scalars(
                select(DeploymentTargetRow).where(
                    DeploymentTargetRow.deployment_id == deployment.id,
                    one_of(session, DeploymentTargetRow.agent_id, [a.id for a in agents]),
                    DeploymentTargetRow.phase == phase,
                )
            )
        }
        now = utcnow()
        for agent in agents:
            agent.manifest_sequence += 1
            payload = ManifestPayload(
                deployment_id=deployment.id,
                agent_id=agent.id,
                org_id=deployment.org_id,
                environment_id=deployment.env_id,
                sequence=agent.manifest_sequence,
                bundle_id=bundle.id,
                bundle_digest=bundle.digest or "",
                bundle_size=bundle.size or 0,
                spec_hash=bundle.spec_hash,
                issued_at=int(now.timestamp()),
                expires_at=int(now.timestamp()) + delivery.settings.manifest_ttl_seconds,
                action="rollback" if phase is TargetPhase.ROLLBACK else "deploy",
                approvals=signed_approvals,
            )
            envelope = await delivery.sign(session, deployment.org_id, msgspec.to_builtins(payload))
            target = existing.get(agent.id)
            if target is None:
                target = DeploymentTargetRow(
                    deployment_id=deployment.id,
                    agent_id=agent.id,
                    phase=phase,
                    status=TargetStatus.ISSUED,
                    attempts=1,
                )
                session.add(target)
            else:
                move_target(target, TargetStatus.ISSUED)
                target.attempts += 1
            target.bundle_id = bundle.id
            target.bundle_digest = bundle.digest or ""
            target.sequence = agent.manifest_sequence
            target.manifest = msgspec.to_builtins(envelope)
            target.updated_at = now
            issued[agent.id] = target
        if phase is TargetPhase.DEPLOY:
            await _take_over(session, deployment, [a.id for a in agents])
    return issued


async def _take_over(
    session: AsyncSession, deployment: DeploymentRow, agent_ids: list[str]
) -> None:
    """An agent only ever applies its newest manifest: withdraw what other rollouts await of it.

    Those rollouts are then re-evaluated by a job (they must not wait for a report that can
    never come), in their own transactions, so no two deployments are locked at once here.
    """
    await session.flush()
    others = list(
        await session.scalars(
            select(DeploymentTargetRow)
            .join(DeploymentRow, DeploymentRow.id == DeploymentTargetRow.deployment_id)
            .where(
                one_of(session, DeploymentTargetRow.agent_id, agent_ids),
                DeploymentTargetRow.deployment_id != deployment.id,
                DeploymentTargetRow.phase == TargetPhase.DEPLOY,
                DeploymentTargetRow.status.in_(list(UNFINISHED_TARGET)),
                DeploymentRow.status == DeploymentStatus.DEPLOYING,
            )
            .with_for_update(of=DeploymentTargetRow)
        )
    )
    for other in others:
        move_target(other, TargetStatus.CANCELLED, f"superseded by {deployment.id}")
    if others:
        await enqueue(
            session,
            RECONCILE_ENVIRONMENT,
            {"environment_id": deployment.env_id},
        )


async def _current(session: AsyncSession, env_id: str) -> DeploymentRow | None:
    desired = await desired_state(session, env_id, for_update=True)
    return await session.get(DeploymentRow, desired.deployment_id) if desired else None


def _newer(a: DeploymentRow, b: DeploymentRow) -> bool:
    return (a.created_at, a.id) > (b.created_at, b.id)


async def become_current(
    session: AsyncSession, deployment: DeploymentRow, bundle: ConfigBundleRow
) -> None:
    """Make ``deployment`` the environment's current one; older ones are superseded by it.

    A deployment that reaches ``active`` after a newer one already did is superseded at once:
    the newest release wins, whatever order rollouts finish in.
    """
    current = await _current(session, deployment.env_id)
    if current is not None and current.id != deployment.id and _newer(current, deployment):
        deployment.superseded_by = current.id
        return
    if current is None or current.id != deployment.id:
        deployment.previous_deployment_id = current.id if current is not None else None
    await set_desired_state(
        session,
        deployment.env_id,
        DesiredState(deployment.id, bundle.id, bundle.digest or ""),
    )
    deployment.superseded_by = None
    await session.flush()
    older = await session.scalars(
        select(DeploymentRow).where(
            DeploymentRow.env_id == deployment.env_id,
            DeploymentRow.id != deployment.id,
            DeploymentRow.superseded_by.is_(None),
            DeploymentRow.created_at <= deployment.created_at,
            DeploymentRow.status.in_(
                [DeploymentStatus.ACTIVE, DeploymentStatus.FAILED, DeploymentStatus.ROLLED_BACK]
            ),
        )
    )
    for row in older:
        row.superseded_by = deployment.id


async def _targets(
    session: AsyncSession, deployment: DeploymentRow, phase: TargetPhase | None = None
) -> list[DeploymentTargetRow]:
    await session.flush()  # the session does not autoflush; count what was just added
    statement = select(DeploymentTargetRow).where(
        DeploymentTargetRow.deployment_id == deployment.id
    )
    if phase is not None:
        statement = statement.where(DeploymentTargetRow.phase == phase)
    return list(await session.scalars(statement.order_by(DeploymentTargetRow.agent_id)))


async def run_rollout(context: JobContext, payload: dict[str, Any]) -> None:
    """Job: ``approved -> building -> deploying``, one signed manifest per online target."""
    deployment_id = str(payload.get("deployment_id", ""))
    delivery = Delivery.of(context)
    async with context.database.sessionmaker() as session:
        deployment = await locked_deployment(session, deployment_id)
        if deployment is None or deployment.status not in (
            DeploymentStatus.APPROVED,
            DeploymentStatus.BUILDING,
        ):
            return
        await transition(
            session,
            deployment,
            DeploymentStatus.BUILDING,
            actor=SYSTEM,
            reason="building the bundle",
            # The build deadline set at approval (rows from before deadlines existed get one now).
            deadline=deployment.deadline_at
            or delivery.deadline(context.settings.build_timeout_seconds),
        )
        await session.commit()
        try:
            bundle_id = await _ready_bundle(session, context, deployment_id)
        except Exception as exc:
            if isinstance(exc, PermanentJobError) or context.final_attempt:
                await session.rollback()
                deployment = await locked_deployment(session, deployment_id)
                if deployment is not None and deployment.status == DeploymentStatus.BUILDING:
                    await transition(
                        session,
                        deployment,
                        DeploymentStatus.FAILED,
                        actor=SYSTEM,
                        reason=f"bundle build failed: {exc}",
                    )
                    await session.commit()
            raise
        deployment = await locked_deployment(session, deployment_id)
        if deployment is None or deployment.status != DeploymentStatus.BUILDING:
            return  # cancelled, revoked or past its deadline while the bundle was building
        bundle = await session.get(ConfigBundleRow, bundle_id)
        if bundle is None or bundle.status != "ready":
            await transition(
                session,
                deployment,
                DeploymentStatus.FAILED,
                actor=SYSTEM,
                reason="bundle build failed",
            )
            await session.commit()
            return
        targets = await online_agent_ids(
            session,
            deployment.env_id,
            context.settings,
            context.heartbeats,
            among=deployment.requested_agent_ids,
        )
        # Lock order on every path: deployment, environment, agents.
        current = await desired_state(session, deployment.env_id, for_update=True)
        deployment.previous_deployment_id = current.deployment_id if current else None
        manifests = await issue_manifests(
            session, delivery, deployment, targets, bundle, TargetPhase.DEPLOY
        )
        issued = sorted(manifests)
        # Plain values: handed to the waiting polls after the commit.
        handover = {a: (t.sequence, t.manifest) for a, t in manifests.items()}
        deployment.agent_ids = issued
        deadline = delivery.deadline(context.settings.rollout_timeout_seconds)
        deployment.rollout_deadline_at = deadline
        await transition(
            session,
            deployment,
            DeploymentStatus.DEPLOYING,
            actor=SYSTEM,
            reason=f"manifests issued to {len(issued)} online agent(s)",
            deadline=deadline,
        )
        await reconcile(session, delivery, deployment)
        await session.commit()
        if context.signals is not None:
            context.signals.deliver(handover)
        logger.info("deployment %s deploying to %d agent(s)", deployment.id, len(issued))


async def start_rollback(
    session: AsyncSession,
    delivery: Delivery,
    deployment: DeploymentRow,
    *,
    actor: str,
    reason: str,
) -> None:
    """``-> rolling_back``: every target gets a manifest for the bundle to restore (no commit).

    Rolling back the current deployment makes the one it replaced current again (and its bundle
    the desired one at once); rolling back one still in flight restores the current one. Targets
    that are not online are recorded ``unreachable`` right away: they converge when they return.
    Idempotent: a deployment already rolling back gets no second set of manifests.
    """
    if deployment.status == DeploymentStatus.ROLLING_BACK:
        return
    desired = await desired_state(session, deployment.env_id, for_update=True)
    was_current = desired is not None and desired.deployment_id == deployment.id
    if was_current:
        restore_id = deployment.previous_deployment_id
    else:
        restore_id = desired.deployment_id if desired else None
    restore = await session.get(DeploymentRow, restore_id) if restore_id else None
    if restore is not None and restore.status != DeploymentStatus.ACTIVE:
        restore = None  # rolled back itself meanwhile: nothing to go back to
    bundle = (
        await session.get(ConfigBundleRow, restore.config_bundle_id)
        if restore is not None and restore.config_bundle_id
        else None
    )
    if bundle is not None and bundle.status != "ready":
        bundle = None
    await transition(
        session,
        deployment,
        DeploymentStatus.ROLLING_BACK,
        actor=actor,
        reason=reason,
        deadline=delivery.deadline(delivery.settings.rollback_timeout_seconds),
    )
    if was_current:
        await set_desired_state(
            session,
            deployment.env_id,
            DesiredState(restore.id, bundle.id, bundle.digest or "")
            if restore is not None and bundle is not None
            else None,
        )
        if restore is not None and bundle is not None:
            restore.superseded_by = None
    # Targets another rollout took over have moved on: this rollback leaves them alone.
    deploy_targets = [
        t
        for t in await _targets(session, deployment, TargetPhase.DEPLOY)
        if t.status != TargetStatus.CANCELLED
    ]
    for target in deploy_targets:
        if target.status == TargetStatus.ISSUED:
            move_target(target, TargetStatus.CANCELLED, "superseded by the rollback")
    if restore is None or bundle is None:
        await transition(
            session,
            deployment,
            DeploymentStatus.ROLLED_BACK,
            actor=SYSTEM,
            reason="no earlier deployment to restore; agents keep what they run",
        )
        return
    online = set(
        await online_agent_ids(
            session,
            deployment.env_id,
            delivery.settings,
            delivery.heartbeats,
            among=[t.agent_id for t in deploy_targets],
        )
    )
    issued = await issue_manifests(
        session,
        delivery,
        deployment,
        [t.agent_id for t in deploy_targets],
        bundle,
        TargetPhase.ROLLBACK,
    )
    for agent_id, rollback in issued.items():
        if agent_id not in online:
            move_target(rollback, TargetStatus.UNREACHABLE, "not online when the rollback started")
    await reconcile(session, delivery, deployment)


async def fail(
    session: AsyncSession, delivery: Delivery, deployment: DeploymentRow, reason: str
) -> None:
    """``deploying -> failed``, then ``rolling_back`` if the environment rolls back on its own.

    Otherwise the hosts that activated it stay as they are until an operator acts; manifests
    no agent picked up yet are withdrawn, so no further host installs a failed release.
    """
    await transition(session, deployment, DeploymentStatus.FAILED, actor=SYSTEM, reason=reason)
    env = await session.get(EnvironmentRow, deployment.env_id)
    if env is not None and env.rollback_policy == "automatic":
        await start_rollback(
            session, delivery, deployment, actor=SYSTEM, reason="automatic rollback: " + reason
        )
        return
    for target in await _targets(session, deployment, TargetPhase.DEPLOY):
        if target.status == TargetStatus.ISSUED:
            move_target(target, TargetStatus.CANCELLED, "the deployment failed")
    current = await _current(session, deployment.env_id)
    if current is not None and current.id != deployment.id and _newer(current, deployment):
        deployment.superseded_by = current.id


async def _deploy_tally(
    session: AsyncSession, deployment: DeploymentRow
) -> dict[TargetStatus, int]:
    await session.flush()  # the session does not autoflush; count what was just changed
    rows = await session.execute(
        select(DeploymentTargetRow.status, func.count())
        .where(
            DeploymentTargetRow.deployment_id == deployment.id,
            DeploymentTargetRow.phase == TargetPhase.DEPLOY,
        )
        .group_by(DeploymentTargetRow.status)
    )
    return {TargetStatus(status): int(n) for status, n in rows.all()}


def _outcomes(targets: list[DeploymentTargetRow]) -> str:
    counts: dict[str, int] = {}
    for target in targets:
        counts[target.status] = counts.get(target.status, 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


async def reconcile(session: AsyncSession, delivery: Delivery, deployment: DeploymentRow) -> None:
    """Recompute an in-flight deployment's status from its targets (no commit)."""
    if deployment.status == DeploymentStatus.DEPLOYING:
        # Counted in the database, not loaded: every report of a large rollout reconciles.
        # A target another rollout took over (cancelled) is no longer waited for.
        tally = await _deploy_tally(session, deployment)
        waited = sum(n for status, n in tally.items() if status != TargetStatus.CANCELLED)
        if tally.get(TargetStatus.FAILED):
            first = await session.scalar(
                select(DeploymentTargetRow)
                .where(
                    DeploymentTargetRow.deployment_id == deployment.id,
                    DeploymentTargetRow.phase == TargetPhase.DEPLOY,
                    DeploymentTargetRow.status == TargetStatus.FAILED,
                )
                .order_by(DeploymentTargetRow.agent_id)
                .limit(1)
            )
            assert first is not None  # noqa: S101 - counted just now, under the deployment lock
            await fail(
                session, delivery, deployment, f"agent {first.agent_id}: {first.reason or 'failed'}"
            )
        elif tally.get(TargetStatus.ACTIVE, 0) == waited:
            # Targets, not the deployment's (deferred) agent list: the same agents.
            bundle = await session.get(ConfigBundleRow, deployment.config_bundle_id)
            await transition(
                session,
                deployment,
                DeploymentStatus.ACTIVE,
                actor=SYSTEM,
                reason=(
                    f"every target is active ({waited})"
                    if waited
                    else "every target moved on to a newer deployment"
                    if tally
                    else "no agent was online; agents converge when they check in"
                ),
            )
            if bundle is not None:
                await become_current(session, deployment, bundle)
    elif deployment.status == DeploymentStatus.ROLLING_BACK:
        rollback = await _targets(session, deployment, TargetPhase.ROLLBACK)
        if all(t.status not in UNFINISHED_TARGET for t in rollback):
            await transition(
                session,
                deployment,
                DeploymentStatus.ROLLED_BACK,
                actor=SYSTEM,
                reason=f"previous bundle restored: {_outcomes(rollback) or 'no targets'}",
            )


def _reported(target: DeploymentTargetRow, report: DeploymentReport) -> TargetStatus:
    if report.status == "activating":
        return TargetStatus.ACTIVATING
    if target.phase == TargetPhase.DEPLOY and report.status in ("active", "failed"):
        return TargetStatus(report.status)
    if target.phase == TargetPhase.ROLLBACK and report.status in ("rolled_back", "active"):
        return TargetStatus.CONFIRMED
    if target.phase == TargetPhase.ROLLBACK and report.status == "failed":
        return TargetStatus.FAILED
    raise Conflict(f"A {target.phase} manifest cannot be reported {report.status}")


async def record_report(
    session: AsyncSession, agent_id: str, report: DeploymentReport
) -> DeploymentRow | None:
    """Check an agent's report and move its target (no commit, no reconcile).

    Returns the deployment to reconcile, or ``None`` when the report changes nothing (a repeat,
    or ``activating``, from which nothing can be decided).

    Raises:
        NotFound: no such manifest for this agent.
        Conflict: the manifest was already reported otherwise, or cannot be reported so.
    """
    (outcome,) = await record_reports(session, [(agent_id, report)])
    if isinstance(outcome, DomainError):
        raise outcome
    return outcome


async def record_reports(
    session: AsyncSession, reports: Sequence[tuple[str, DeploymentReport]]
) -> list[DeploymentRow | DomainError | None]:
    """:func:`record_report` for many ``(agent_id, report)`` at once, in a few statements.

    Each outcome is what :func:`record_report` would return or raise for that report, applied
    in order (a later report of the same manifest sees the earlier one's move). A refused
    report changes nothing: every check runs before its target moves. The deployments are
    locked in id order, then their targets, as one report alone would lock them.
    """
    if not reports:
        return []
    deployment_ids = sorted({report.deployment_id for _, report in reports})
    deployments = {
        row.id: row
        for row in await session.scalars(
            select(DeploymentRow)
            .where(DeploymentRow.id.in_(deployment_ids))
            .order_by(DeploymentRow.id)
            .with_for_update()
        )
    }
    wanted = {(report.deployment_id, agent_id, report.sequence) for agent_id, report in reports}
    targets: dict[tuple[str, str, int], DeploymentTargetRow] = {}
    for row in await session.scalars(
        select(DeploymentTargetRow)
        .where(
            DeploymentTargetRow.deployment_id.in_(deployment_ids),
            one_of(
                session,
                DeploymentTargetRow.agent_id,
                sorted({agent_id for agent_id, _ in reports}),
            ),
        )
        .order_by(DeploymentTargetRow.deployment_id, DeploymentTargetRow.agent_id)
        .with_for_update()
    ):
        key = (row.deployment_id, row.agent_id, row.sequence)
        if key in wanted:
            targets[key] = row
    outcomes: list[DeploymentRow | DomainError | None] = []
    for agent_id, report in reports:
        deployment = deployments.get(report.deployment_id)
        target = targets.get((report.deployment_id, agent_id, report.sequence))
        try:
            outcomes.append(_move_reported(deployment, target, report))
        except DomainError as exc:
            outcomes.append(exc)
    return outcomes


def _move_reported(
    deployment: DeploymentRow | None,
    target: DeploymentTargetRow | None,
    report: DeploymentReport,
) -> DeploymentRow | None:
    if deployment is None or target is None:
        raise NotFound(
            f"No manifest {report.sequence} of deployment {report.deployment_id} for this agent"
        )
    reported = _reported(target, report)
    current = TargetStatus(target.status)
    if current is reported:
        return None
    if current not in UNFINISHED_TARGET and current is not TargetStatus.UNREACHABLE:
        raise Conflict(f"Manifest {report.sequence} was already reported {current.value}")
    if reported is TargetStatus.ACTIVATING and current is TargetStatus.ACTIVATING:
        return None
    move_target(target, reported, report.reason)
    return None if reported is TargetStatus.ACTIVATING else deployment


async def apply_report(
    session: AsyncSession, delivery: Delivery, agent_id: str, report: DeploymentReport
) -> None:
    """Record an agent's progress on one manifest and reconcile the deployment (commits)."""
    deployment = await record_report(session, agent_id, report)
    if deployment is not None:
        await reconcile(session, delivery, deployment)
    await session.commit()
