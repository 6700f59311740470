"""Regression tests for defects found in review: each input here once produced a 500 or a hole."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from controlplane.db.models import AgentRow, ApprovalRow
from controlplane.db.types import utcnow
from shared.roles import Role
from tests.conftest import Stack
from tests.controlplane.agents.helpers import (
    agent_headers,
    enroll,
    enrollment_token,
)
from tests.controlplane.delivery.world import make_world

pytestmark = pytest.mark.anyio


async def test_second_rollback_request_is_idempotent(stack: Stack) -> None:
    world = await make_world(stack, agents=1)
    first = (await world.deploy()).json()
    await world.activate_all(first["id"])
    second = (await world.deploy()).json()
    await world.activate_all(second["id"])
    path = f"{world.tree.env_path}/deployments/{second['id']}/rollback"
    assert (await stack.call("POST", path, world.tree.owner)).status_code == 202
    again = await stack.call("POST", path, world.tree.owner)
    assert again.status_code == 202
    rollback_targets = [t for t in again.json()["targets"] if t["phase"] == "rollback"]
    assert len(rollback_targets) == 1


async def test_oversized_agent_numbers_and_strings_are_400(stack: Stack) -> None:
    world = await make_world(stack, agents=1)
    agent = world.agents[0]
    heartbeat = await stack.call(
        "POST",
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        headers=agent_headers(agent),
        json={"sequence": 2**70},
    )
    assert heartbeat.status_code == 400
    long_version = await stack.call(
        "POST",
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        headers=agent_headers(agent),
        json={"sequence": 1, "agent_version": "v" * 100},
    )
    assert long_version.status_code == 400
    report = await stack.call(
        "POST",
        f"/api/v1/agents/{agent['agent_id']}/deployment",
        headers=agent_headers(agent),
        json={"deployment_id": "dep_x", "sequence": 2**70, "status": "active"},
    )
    assert report.status_code == 400
    token = await enrollment_token(stack, world.tree)
    assert (await enroll(stack, world.tree, token["token"], name="n" * 500)).status_code == 400
    assert (await enroll(stack, world.tree, token["token"], name="ok-name")).status_code == 201


async def test_one_bad_buffered_heartbeat_does_not_block_the_fleet(stack: Stack) -> None:
    from shared.agents import Heartbeat

    world = await make_world(stack, agents=2)
    good, bad = world.agents
    buffer = stack.app.state.heartbeats
    buffer.record(bad["agent_id"], utcnow(), Heartbeat(sequence=2**64))  # bypasses validation
    buffer.record(good["agent_id"], utcnow(), Heartbeat(sequence=7, agent_version="1.0"))
    await buffer.flush()
    async with stack.database.sessionmaker() as session:
        row = await session.get(AgentRow, good["agent_id"])
    assert row is not None
    assert row.last_sequence == 7


async def test_a_late_approval_is_refused_and_the_deployment_denied(stack: Stack) -> None:
    world = await make_world(stack, agents=1, approvals_required=1, approval_window_seconds=60)
    created = (await world.deploy()).json()
    async with stack.database.sessionmaker() as session:
        await session.execute(
            update(ApprovalRow)
            .where(ApprovalRow.deployment_id == created["id"])
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
        await session.commit()
    approver = await stack.member(world.tree, Role.APPROVER)
    late = await stack.call(
        "POST",
        f"{world.tree.env_path}/approvals",
        approver,
        json={"deployment_id": created["id"], "decision": "approve"},
    )
    assert late.status_code == 409
    detail = await world.detail(created["id"])
    assert detail["status"] == "denied"


async def test_manifests_carry_the_approvals(stack: Stack) -> None:
    world = await make_world(stack, agents=1, approvals_required=1)
    created = (await world.deploy()).json()
    approver = await stack.member(world.tree, Role.APPROVER)
    granted = await stack.ok(
        "POST",
        f"{world.tree.env_path}/approvals",
        approver,
        json={"deployment_id": created["id"], "decision": "approve"},
    )
    await world.wait_status(created["id"], "deploying")
    manifest = await world.manifest(world.agents[0])
    assert [a.approval_id for a in manifest.approvals] == [granted["id"]]
    assert manifest.approvals[0].approver_id == approver.user_id
