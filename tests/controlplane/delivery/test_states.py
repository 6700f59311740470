"""Every transition table, exhaustively: each allowed move succeeds, each other one is a 409."""

from __future__ import annotations

import itertools
from datetime import timedelta

import pytest
from sqlalchemy import select

from controlplane.db.models import (
    ApprovalRow,
    DeploymentEventRow,
    DeploymentRow,
    DeploymentTargetRow,
    JobRow,
)
from controlplane.db.types import utcnow
from controlplane.delivery.lifecycle import DEADLINE_JOB, move_approval, move_target, transition
from controlplane.delivery.states import (
    APPROVAL_TRANSITIONS,
    DEPLOYMENT_TRANSITIONS,
    PROGRESSING,
    TARGET_TRANSITIONS,
    TERMINAL,
    ApprovalStatus,
    DeploymentStatus,
    TargetPhase,
    TargetStatus,
)
from controlplane.errors import Conflict
from shared.deployments_api import DeploymentStatus as WireDeploymentStatus
from shared.ids import new_id
from tests.conftest import Stack
from tests.controlplane.delivery.world import make_world

pytestmark = pytest.mark.anyio


def test_the_nine_statuses_of_the_api_reference_stay() -> None:
    assert {s.value for s in DeploymentStatus} == set(WireDeploymentStatus.__args__)  # type: ignore[attr-defined]
    assert set(DEPLOYMENT_TRANSITIONS) == set(DeploymentStatus)
    assert {DeploymentStatus.DENIED, DeploymentStatus.ROLLED_BACK} == TERMINAL
    # Only statuses that wait for something count against the in-flight cap.
    assert DeploymentStatus.ACTIVE not in PROGRESSING
    assert DeploymentStatus.FAILED not in PROGRESSING


@pytest.mark.parametrize(("current", "to"), list(itertools.product(ApprovalStatus, ApprovalStatus)))
def test_every_approval_move(current: ApprovalStatus, to: ApprovalStatus) -> None:
    row = ApprovalRow(id="apr_x", status=current)
    if current is to:
        assert move_approval(row, to) is False
    elif to in APPROVAL_TRANSITIONS[current]:
        assert move_approval(row, to) is True
        assert row.status is to
    else:
        with pytest.raises(Conflict):
            move_approval(row, to)
        assert row.status is current


@pytest.mark.parametrize(("current", "to"), list(itertools.product(TargetStatus, TargetStatus)))
def test_every_target_move(current: TargetStatus, to: TargetStatus) -> None:
    row = DeploymentTargetRow(agent_id="agt_x", status=current, reason="before")
    if current is to:
        assert move_target(row, to) is False
        assert row.reason == "before"
    elif to in TARGET_TRANSITIONS[current]:
        assert move_target(row, to, "why") is True
        assert (row.status, row.reason) == (to, "why")
    else:
        with pytest.raises(Conflict):
            move_target(row, to)
        assert row.status is current


async def test_every_deployment_move(stack: Stack) -> None:
    """81 moves on real rows: allowed ones record an event and schedule the deadline."""
    world = await make_world(stack, agents=0)
    env = await stack.ok("GET", world.tree.env_path, world.tree.owner)
    deadline = utcnow() + timedelta(hours=1)
    for current, to in itertools.product(DeploymentStatus, DeploymentStatus):
        async with stack.database.sessionmaker() as session:
            row = DeploymentRow(
                id=new_id("dep"),
                org_id=env["org_id"],
                env_id=env["id"],
                pipeline_version_id=world.version_id,
                status=current,
                agent_ids=[],
            )
            session.add(row)
            await session.commit()
            if current is to:
                assert await transition(session, row, to, actor="t", deadline=deadline) is False
            elif to in DEPLOYMENT_TRANSITIONS[current]:
                moved = await transition(session, row, to, actor="t", reason="r", deadline=deadline)
                assert moved is True
                await session.commit()
                event = await session.scalar(
                    select(DeploymentEventRow).where(DeploymentEventRow.deployment_id == row.id)
                )
                assert event is not None
                assert (event.from_status, event.to_status) == (current.value, to.value)
                job = await session.scalar(
                    select(JobRow).where(JobRow.dedupe_key == f"{DEADLINE_JOB}:{row.id}:{to}")
                )
                if to in PROGRESSING:
                    assert row.deadline_at == deadline
                    assert job is not None
                    assert job.run_after == deadline
                else:
                    assert row.deadline_at is None
                    assert job is None
            else:
                with pytest.raises(Conflict, match=f"is {current.value}; it cannot become"):
                    await transition(session, row, to, actor="t", deadline=deadline)
                assert row.status is current
            await session.rollback()


async def test_a_waiting_status_without_a_deadline_is_a_programming_error(stack: Stack) -> None:
    world = await make_world(stack, agents=0)
    env = await stack.ok("GET", world.tree.env_path, world.tree.owner)
    async with stack.database.sessionmaker() as session:
        row = DeploymentRow(
            id=new_id("dep"),
            org_id=env["org_id"],
            env_id=env["id"],
            pipeline_version_id=world.version_id,
            status=DeploymentStatus.APPROVED,
            agent_ids=[],
        )
        session.add(row)
        await session.flush()
        with pytest.raises(ValueError, match="needs a deadline"):
            await transition(session, row, DeploymentStatus.BUILDING, actor="t")
        await session.rollback()


def test_phases_are_two() -> None:
    assert {p.value for p in TargetPhase} == {"deploy", "rollback"}
