"""Convergence: every agent of an environment ends up running its desired bundle.

Level-triggered: each time an agent asks for its deployment, :func:`manifest_for` compares what
the agent should run with what it was given and what it reports, and acts:

1. The agent is a target of a deployment that is still moving (``deploying``, ``rolling_back``)
   or of a ``failed`` one nobody replaced yet: that deployment owns it; serve its manifest.
   (A failed rollout with a manual rollback policy leaves its hosts as they are until an
   operator rolls it back or deploys something newer.)
2. A whole-environment deployment is ``deploying`` and the agent is not among its targets (it
   enrolled or came back meanwhile): the agent joins it.
3. Otherwise, against the environment's desired state (its current deployment's bundle):
   a manifest for that bundle still waiting for the agent is served; one it failed is retried
   with a fresh manifest after a growing pause (never a hot loop); one it never got (a host
   enrolled later, rebuilt, or back from being offline) is issued now; one it confirmed but no
   longer runs (its heartbeats say so well after the confirmation) is issued again.

Issuing happens with the agent's row locked and the decision re-taken under that lock, so two
control-plane processes never issue two manifests for the same agent and bundle.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import and_, exists, or_, select
from sqlalchemy.orm import aliased, undefer

from controlplane.agents.fleetview import EnvironmentDelivery
from controlplane.agents.service import observed_bundle
from controlplane.db.engine import begin_write
from controlplane.db.models import AgentRow, ConfigBundleRow, DeploymentRow, DeploymentTargetRow
from controlplane.db.types import utcnow
from controlplane.db.values import one_of
from controlplane.delivery.rollout import issue_manifest
from controlplane.delivery.states import DeploymentStatus, TargetPhase, TargetStatus
from controlplane.environments.service import desired_state

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.db.engine import Database
    from controlplane.delivery.rollout import Delivery
    from controlplane.environments.service import DesiredState
    from controlplane.settings import Settings

__all__ = [
    "Served",
    "Unread",
    "delivery_state",
    "latest_sequence",
    "latest_target",
    "manifest_for",
    "read_waiting_manifests",
    "retry_delay",
    "waiting_manifests",
]

#: Agents per statement when long polls fetch the manifests their environment's view shows.
_PREFETCH_BATCH = 2_000


class Unread(enum.Enum):
    """The desired state is not known yet: the decision reads it."""

    DESIRED = "desired"


class _Plan(enum.Enum):
    SERVE = "serve"  # answer with the manifest still waiting for the agent, if there is one
    SETTLED = "settled"  # nothing to apply, and nothing will be due without a change
    ISSUE = "issue"  # a fresh manifest for the desired bundle
    JOIN = "join"  # a fresh manifest of the deployment now deploying


async def latest_target(
    session: AsyncSession, agent_id: str
) -> tuple[DeploymentTargetRow, DeploymentRow] | tuple[None, None]:
    """The newest manifest issued to this agent, and its deployment, in one statement.

    A deployment check decides in full once per host after each of its reports, so reading
    the deployment apart cost a rollout of 10,000 hosts as many statements again.
    """
    row = (
        await session.execute(
            select(DeploymentTargetRow, DeploymentRow)
            .join(DeploymentRow, DeploymentRow.id == DeploymentTargetRow.deployment_id)
            .options(undefer(DeploymentTargetRow.manifest))  # served from here
            .where(DeploymentTargetRow.agent_id == agent_id)
            .order_by(DeploymentTargetRow.sequence.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return None, None
    return row[0], row[1]


async def latest_sequence(session: AsyncSession, agent_id: str) -> int:
    """The sequence of the newest manifest issued to this agent (0 before any)."""
    sequence = await session.scalar(
        select(DeploymentTargetRow.sequence)
        .where(DeploymentTargetRow.agent_id == agent_id)
        .order_by(DeploymentTargetRow.sequence.desc())
        .limit(1)
    )
    return int(sequence or 0)


async def waiting_manifests(
    session: AsyncSession, wanted: Mapping[str, int]
) -> dict[str, tuple[int, Any]]:
    """The manifests waiting for these agents that a deployment check would serve unchanged.

    ``wanted`` maps an agent to the sequence the environment's view shows waiting for it. An
    agent is in the answer, as ``(sequence, envelope)``, only if that manifest is still its
    newest, still ``issued``, and its deployment still owns the agent (``deploying``; or
    ``rolling_back`` for a rollback manifest): exactly when :func:`manifest_for` serves the
    newest manifest as it is. Anything else (a newer manifest, a report meanwhile, a cancelled
    or finished deployment) is left to a full decision. A few statements for thousands of
    agents, where a decision each costs several (see ``AgentSignals``).
    """
    newer = aliased(DeploymentTargetRow)
    found: dict[str, tuple[int, Any]] = {}
    agent_ids = sorted(wanted)
    for offset in range(0, len(agent_ids), _PREFETCH_BATCH):
        rows = await session.execute(
            select(
                DeploymentTargetRow.agent_id,
                DeploymentTargetRow.sequence,
                DeploymentTargetRow.manifest,
            )
            .join(DeploymentRow, DeploymentRow.id == DeploymentTargetRow.deployment_id)
            .where(
                one_of(
                    session,
                    DeploymentTargetRow.agent_id,
                    agent_ids[offset : offset + _PREFETCH_BATCH],
                ),
                DeploymentTargetRow.status == TargetStatus.ISSUED,
                or_(
                    DeploymentRow.status == DeploymentStatus.DEPLOYING,
                    and_(
                        DeploymentRow.status == DeploymentStatus.ROLLING_BACK,
                        DeploymentTargetRow.phase == TargetPhase.ROLLBACK,
                    ),
                ),
                ~exists().where(
                    newer.agent_id == DeploymentTargetRow.agent_id,
                    newer.sequence > DeploymentTargetRow.sequence,
                ),
            )
        )
        for agent_id, sequence, manifest in rows:
            if wanted.get(agent_id) == sequence:
                found[agent_id] = (int(sequence), manifest)
    await session.rollback()
    return found


async def read_waiting_manifests(
    database: Database, wanted: Mapping[str, int]
) -> dict[str, tuple[int, Any]]:
    """:func:`waiting_manifests` in a read session of its own."""
    async with database.readers() as session:
        return await waiting_manifests(session, wanted)


def retry_delay(settings: Settings, attempts: int) -> timedelta:
    """The pause before another manifest for a bundle an agent failed ``attempts`` times."""
    base = settings.convergence_retry_seconds
    seconds = min(settings.convergence_retry_max_seconds, base * 2 ** max(0, attempts - 1))
    return timedelta(seconds=seconds)


def _holds(
    owner: DeploymentRow | None, latest: DeploymentTargetRow | None, desired: DesiredState | None
) -> bool:
    """Whether the deployment of the agent's newest manifest still owns the agent."""
    if owner is None or latest is None:
        return False
    if owner.status in (DeploymentStatus.DEPLOYING, DeploymentStatus.ROLLING_BACK):
        return True
    # A failed rollout nobody replaced keeps the hosts that activated it as they are.
    return (
        owner.status == DeploymentStatus.FAILED
        and owner.superseded_by is None
        and latest.status == TargetStatus.ACTIVE
        and (desired is None or desired.deployment_id != owner.id)
    )


def _waiting(
    latest: DeploymentTargetRow | None,
    owner: DeploymentRow | None,
    held: bool,
    desired_digest: str | None,
) -> DeploymentTargetRow | None:
    """The newest manifest if the agent should still apply it, else ``None``.

    Only a manifest that waits for the agent is served, and only while its deployment owns the
    agent or it carries the desired bundle: a cancelled, failed or superseded one never is.
    """
    if latest is None or not (held or latest.bundle_digest == desired_digest):
        return None
    rolling_back = owner is not None and owner.status == DeploymentStatus.ROLLING_BACK
    if rolling_back and latest.phase != TargetPhase.ROLLBACK:
        return None  # a deploy manifest of a release being rolled back is never applied
    if latest.status in (TargetStatus.ISSUED, TargetStatus.ACTIVATING):
        return latest
    return latest if latest.status == TargetStatus.UNREACHABLE and rolling_back else None


async def _joinable(session: AsyncSession, agent: AgentRow) -> DeploymentRow | None:
    """The newest deployment rolling out to this agent's environment that would include it."""
    rows = await session.scalars(
        select(DeploymentRow)
        .where(
            DeploymentRow.env_id == agent.env_id,
            DeploymentRow.status == DeploymentStatus.DEPLOYING,
        )
        .options(undefer(DeploymentRow.requested_agent_ids))
        .order_by(DeploymentRow.created_at.desc(), DeploymentRow.id.desc())
    )
    for row in rows:
        if row.requested_agent_ids is None or agent.id in row.requested_agent_ids:
            return row
    return None


class _Decision(NamedTuple):
    plan: _Plan
    #: The manifest to serve (``None``: nothing to apply).
    serve: DeploymentTargetRow | None = None
    #: The deployment to issue a manifest for (``ISSUE``, ``JOIN``).
    deployment: DeploymentRow | None = None
    #: The answer holds until the agent acts or the environment's view changes: no time-based
    #: step (a retry falling due, heartbeats that may yet disagree) can change it.
    stable: bool = False
    #: The sequence of the newest manifest the agent was issued (0: none).
    newest: int = 0


async def _plan(
    session: AsyncSession,
    delivery: Delivery,
    agent: AgentRow,
    now: datetime,
    desired: DesiredState | Unread | None,
) -> _Decision:
    """What to do for ``agent`` now."""
    latest, owner = await latest_target(session, agent.id)
    if desired is Unread.DESIRED:
        desired = await desired_state(session, agent.env_id)
    decision = await _decide(session, delivery, agent, now, latest, owner, desired)
    return decision._replace(newest=latest.sequence if latest is not None else 0)


async def _decide(
    session: AsyncSession,
    delivery: Delivery,
    agent: AgentRow,
    now: datetime,
    latest: DeploymentTargetRow | None,
    owner: DeploymentRow | None,
    desired: DesiredState | None,
) -> _Decision:
    """``owner`` is the deployment of ``latest``, the agent's newest manifest."""
    digest = desired.bundle_digest if desired else None
    if _holds(owner, latest, desired):
        # Only a report, the deployment moving on, or a manifest issued changes what it serves.
        return _Decision(_Plan.SERVE, _waiting(latest, owner, True, digest), stable=True)
    joinable = await _joinable(session, agent)
    if joinable is not None:
        return _Decision(_Plan.JOIN, deployment=joinable)
    waiting = _waiting(latest, owner, False, digest)
    serve = _Decision(_Plan.SERVE, waiting)
    settled = _Decision(_Plan.SETTLED if waiting is None else _Plan.SERVE, waiting, stable=True)
    if desired is None:
        return settled

    async def issue() -> _Decision:  # read only when issuing: mostly the answer is not that
        target = await session.get(DeploymentRow, desired.deployment_id)
        return _Decision(_Plan.ISSUE, deployment=target)

    if latest is not None and latest.bundle_digest == desired.bundle_digest:
        status = TargetStatus(latest.status)
        if status in (TargetStatus.ISSUED, TargetStatus.ACTIVATING):
            return serve._replace(stable=True)  # the agent acts next
        if status in (TargetStatus.UNREACHABLE, TargetStatus.CANCELLED):
            return await issue()
        due = latest.updated_at + retry_delay(delivery.settings, latest.attempts)
        if status is TargetStatus.FAILED:
            return await issue() if now >= due else serve
        # Confirmed: re-issue only if heartbeats well after the confirmation say otherwise.
        observed = observed_bundle(agent, delivery.heartbeats)
        grace = timedelta(seconds=delivery.settings.agent_heartbeat_interval_seconds)
        lost = (
            observed.seen_at is not None
            and observed.seen_at > latest.updated_at + grace
            and observed.digest != desired.bundle_digest
        )
        if lost:
            return await issue() if now >= due else serve
        # Settled only once heartbeats agree: a disagreeing one may turn into "lost" later.
        return settled if observed.digest == desired.bundle_digest else serve
    if observed_bundle(agent, delivery.heartbeats).digest == desired.bundle_digest:
        return settled
    return await issue()


@dataclass(frozen=True, slots=True)
class Served:
    """What the deployment check answers: the manifest's sequence and envelope (or none).

    With nothing to apply, ``sequence`` names the newest manifest the agent was issued (0: none),
    so the answer's ETag stays the one the agent holds once it applied that manifest: its next
    poll waits instead of fetching a "nothing" that tells it nothing new (a rollout of 10,000
    hosts saves as many decisions and round trips).
    """

    sequence: int = 0
    manifest: Any = None
    #: Agents issued a manifest by this decision (their long polls are woken).
    issued_to: tuple[str, ...] = ()
    #: This answer holds until something changes: a report from the agent, a manifest issued to
    #: it, or the environment's desired bundle, moving deployments or waiting manifests. No
    #: time-based step (a retry falling due, heartbeats that may yet disagree) can change it.
    stable: bool = False
    #: The sequence of the newest manifest the decision found issued to the agent (0: none;
    #: -1: not read), so a long poll need not read it again to notice a newer one later.
    newest: int = -1

    @classmethod
    def of(
        cls,
        target: DeploymentTargetRow | None,
        *,
        issued: bool = False,
        stable: bool = False,
        newest: int = -1,
    ) -> Served:
        if target is None:
            return cls(max(newest, 0), stable=stable, newest=newest)
        issued_to = (target.agent_id,) if issued else ()
        return cls(target.sequence, target.manifest, issued_to, stable, newest)


async def manifest_for(
    session: AsyncSession,
    delivery: Delivery,
    agent_id: str,
    desired: DesiredState | Unread | None = Unread.DESIRED,
) -> Served:
    """The manifest this agent should see now, issuing a fresh one if it must converge.

    ``desired`` is the environment's desired state if the caller knows it (the environment's
    view: a deployment check's answer is remembered against that view, and a poll waiting on
    it wakes when the view shows another desired bundle, so deciding against the view is
    consistent); the first decision takes it as given. Issuing always decides again under
    locks against what is stored.

    Ends the session's transaction (commits when it issued a manifest, else rolls back). Locks
    are taken in the order every delivery path uses: the deployment issued for, then the agent.
    """
    agent = await session.get(AgentRow, agent_id)
    if agent is None:
        await session.rollback()
        return Served(newest=0)
    decision = await _plan(session, delivery, agent, utcnow(), desired)
    plan, deployment = decision.plan, decision.deployment
    if plan in (_Plan.SERVE, _Plan.SETTLED) or deployment is None:
        served = Served.of(decision.serve, stable=decision.stable, newest=decision.newest)
        await session.rollback()
        return served
    # Decide again under locks: another process may have just issued this agent a manifest.
    planned = deployment.id
    await session.rollback()  # expires every loaded row: only plain values survive it
    await begin_write(session)  # a deployment check reads; issuing a manifest writes
    await session.execute(
        select(DeploymentRow.id).where(DeploymentRow.id == planned).with_for_update()
    )
    locked = await session.scalar(select(AgentRow).where(AgentRow.id == agent_id).with_for_update())
    if locked is None:
        await session.rollback()
        return Served(newest=0)
    again = await _plan(session, delivery, locked, utcnow(), Unread.DESIRED)
    deployment, newest = again.deployment, again.newest
    same = deployment is not None and again.plan is plan and deployment.id == planned
    bundle = (
        await session.get(ConfigBundleRow, deployment.config_bundle_id)
        if deployment is not None and same
        else None
    )
    if deployment is None or bundle is None or bundle.status != "ready":
        served = Served.of(again.serve, newest=newest)
        await session.rollback()
        return served
    if plan is _Plan.JOIN:
        await session.refresh(deployment, ["agent_ids"])  # deferred: read it only here
        deployment.agent_ids = sorted({*deployment.agent_ids, agent_id})
    issued = await issue_manifest(
        session, delivery, deployment, agent_id, bundle, TargetPhase.DEPLOY
    )
    served = Served.of(issued, issued=True, newest=issued.sequence if issued else newest)
    await session.commit()
    return served


async def delivery_state(session: AsyncSession, env_id: str) -> EnvironmentDelivery:
    """The environment's agents whose newest manifest still waits for them (``issued``), with
    that manifest's sequence, and which of its deployments are moving."""
    newer = aliased(DeploymentTargetRow)
    rows = await session.execute(
        select(DeploymentTargetRow.agent_id, DeploymentTargetRow.sequence)
        .join(DeploymentRow, DeploymentRow.id == DeploymentTargetRow.deployment_id)
        .where(
            DeploymentRow.env_id == env_id,
            DeploymentTargetRow.status == TargetStatus.ISSUED,
            ~exists().where(
                newer.agent_id == DeploymentTargetRow.agent_id,
                newer.sequence > DeploymentTargetRow.sequence,
            ),
        )
    )
    waiting = {agent_id: int(sequence) for agent_id, sequence in rows}
    moving = await session.execute(
        select(DeploymentRow.id, DeploymentRow.status).where(
            DeploymentRow.env_id == env_id,
            DeploymentRow.status.in_([DeploymentStatus.DEPLOYING, DeploymentStatus.ROLLING_BACK]),
        )
    )
    return EnvironmentDelivery(waiting, frozenset(f"{id_}/{status}" for id_, status in moving))
