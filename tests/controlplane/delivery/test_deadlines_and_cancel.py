"""Nothing waits forever: deadlines on every waiting status, cancel, and the in-flight cap."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from controlplane.db.models import DeploymentRow, JobRow
from controlplane.db.types import utcnow
from controlplane.delivery.lifecycle import DEADLINE_JOB
from controlplane.delivery.states import PROGRESSING
from controlplane.jobs import enqueue
from shared.roles import Role
from tests.conftest import Stack
from tests.controlplane.delivery.world import World, make_world

pytestmark = pytest.mark.anyio


async def _force_status(stack: Stack, deployment_id: str, status: str) -> None:
    """Hold a deployment in ``status`` (as if a worker were about to pick it up)."""
    async with stack.database.sessionmaker() as session:
        await session.execute(
            update(DeploymentRow).where(DeploymentRow.id == deployment_id).values(status=status)
        )
        await session.commit()


async def _cancel(world: World, deployment_id: str, actor: Any = None, **body: Any) -> Any:
    return await world.stack.call(
        "POST",
        f"{world.tree.env_path}/deployments/{deployment_id}/cancel",
        actor or world.tree.owner,
        json=body or None,
    )


@pytest.mark.parametrize("held", ["pending_approval", "approved", "building"])
async def test_cancel_before_deploying_denies(stack: Stack, held: str) -> None:
    world = await make_world(stack, agents=1, approvals_required=1)
    created = (await world.deploy()).json()
    if held != "pending_approval":
        await _force_status(stack, created["id"], held)
    deployer = await stack.member(world.tree, Role.DEPLOYER)
    response = await _cancel(world, created["id"], deployer, reason="wrong build")
    assert response.status_code == 202, response.text
    detail = response.json()
    assert detail["status"] == "denied"
    assert detail["deadline_at"] is None
    assert detail["events"][-1]["reason"] == f"cancelled by {deployer.user_id}: wrong build"
    approvals = await stack.ok("GET", f"{world.tree.env_path}/approvals", world.tree.owner)
    assert {a["status"] for a in approvals["items"] if a["deployment_id"] == created["id"]} == {
        "revoked"
    }
    # A terminal deployment cannot be cancelled again.
    again = await _cancel(world, created["id"])
    assert again.status_code == 409
    assert "denied" in again.json()["detail"]


async def test_cancel_while_deploying_rolls_back(stack: Stack) -> None:
    world = await make_world(stack, agents=1)
    base = (await world.deploy()).json()
    await world.activate_all(base["id"])
    second = (await world.deploy()).json()
    await world.wait_status(second["id"], "deploying")
    response = await _cancel(world, second["id"])
    assert response.status_code == 202
    assert response.json()["status"] == "rolling_back"
    agent = world.agents[0]
    manifest = await world.manifest(agent)
    assert manifest.action == "rollback"
    await world.report(agent, manifest, "rolled_back")
    await world.wait_status(second["id"], "rolled_back")
    env = await stack.ok("GET", world.tree.env_path, world.tree.owner)
    assert env["current_deployment_id"] == base["id"]
    # Active (use rollback), and rolled back (terminal), are 409.
    for deployment_id in (base["id"], second["id"]):
        assert (await _cancel(world, deployment_id)).status_code == 409


async def test_cancel_needs_a_deployer_of_this_organization(stack: Stack) -> None:
    world = await make_world(stack, agents=1, approvals_required=1)
    created = (await world.deploy()).json()
    viewer = await stack.member(world.tree, Role.VIEWER)
    assert (await _cancel(world, created["id"], viewer)).status_code == 403
    stranger_world = await make_world(stack, agents=0)
    foreign = await stack.call(
        "POST",
        f"{stranger_world.tree.env_path}/deployments/{created['id']}/cancel",
        stranger_world.tree.owner,
    )
    assert foreign.status_code == 404
    outsider = await stack.call(
        "POST",
        f"{world.tree.env_path}/deployments/{created['id']}/cancel",
        stranger_world.tree.owner,
    )
    assert outsider.status_code == 404
    assert (await world.detail(created["id"]))["status"] == "pending_approval"


async def test_every_waiting_status_has_a_deadline_job_at_its_time(stack: Stack) -> None:
    world = await make_world(stack, agents=1, approvals_required=1)
    created = (await world.deploy()).json()
    assert created["deadline_at"] is not None
    approver = await stack.member(world.tree, Role.APPROVER)
    await stack.ok(
        "POST",
        f"{world.tree.env_path}/approvals",
        approver,
        json={"deployment_id": created["id"], "decision": "approve"},
    )
    await world.wait_status(created["id"], "deploying")
    async with stack.database.sessionmaker() as session:
        jobs = {
            str(job.dedupe_key): job
            for job in await session.scalars(
                select(JobRow).where(JobRow.dedupe_key.like(f"{DEADLINE_JOB}:{created['id']}:%"))
            )
        }
        row = await session.get(DeploymentRow, created["id"])
    assert row is not None
    statuses = {key.rsplit(":", 1)[1] for key in jobs}
    assert statuses == {"pending_approval", "approved", "building", "deploying"}
    assert statuses <= {s.value for s in PROGRESSING}
    assert jobs[f"{DEADLINE_JOB}:{created['id']}:deploying"].run_after == row.deadline_at
    assert row.deadline_at == row.rollout_deadline_at


async def test_a_deadline_job_that_runs_early_reschedules_itself_without_failing(
    stack: Stack,
) -> None:
    world = await make_world(stack, agents=1)
    created = (await world.deploy()).json()
    await world.wait_status(created["id"], "deploying")
    key = f"{DEADLINE_JOB}:{created['id']}:deploying"
    async with stack.database.sessionmaker() as session:
        # Another process's clock is ahead: the job comes due before the deadline.
        await session.execute(
            update(JobRow).where(JobRow.dedupe_key == key).values(run_after=utcnow())
        )
        await session.commit()
    stack.app.state.worker.notify()
    deadline = utcnow() + timedelta(seconds=20)
    job: JobRow | None = None
    while utcnow() < deadline:
        async with stack.database.sessionmaker() as session:
            job = await session.scalar(select(JobRow).where(JobRow.dedupe_key == key))
            assert job is not None
            if job.state == "completed":
                break
        await asyncio.sleep(0.05)
    assert job is not None
    assert (job.state, job.attempts, job.last_error) == ("completed", 1, None)
    async with stack.database.sessionmaker() as session:
        again = list(
            await session.scalars(
                select(JobRow).where(JobRow.dedupe_key.like(f"{key}:%"), JobRow.state == "queued")
            )
        )
    assert len(again) == 1
    assert (await world.detail(created["id"]))["status"] == "deploying"


async def test_a_bundle_not_built_by_its_deadline_fails(stack: Stack) -> None:
    world = await make_world(stack, agents=1, approvals_required=1)
    created = (await world.deploy()).json()
    await _force_status(stack, created["id"], "building")
    async with stack.database.sessionmaker() as session:
        await enqueue(
            session,
            DEADLINE_JOB,
            {"deployment_id": created["id"], "status": "building"},
            run_at=utcnow(),
        )
        await session.commit()
    await world.pass_deadline(created["id"])
    detail = await world.wait_status(created["id"], "failed")
    assert "was not built within" in detail["status_reason"]


async def test_a_rollback_ends_at_its_deadline_recording_unreachable_targets(
    stack: Stack,
) -> None:
    world = await make_world(stack, agents=2, rollback_policy="automatic")
    base = (await world.deploy()).json()
    await world.activate_all(base["id"])
    second = (await world.deploy()).json()
    await world.wait_status(second["id"], "deploying")
    first, silent = world.agents
    await world.report(first, await world.manifest(first), "active")
    # The rollout deadline passes with one agent silent: failed, then an automatic rollback.
    await world.pass_deadline(second["id"])
    rolling = await world.wait_status(second["id"], "rolling_back")
    assert rolling["deadline_at"] is not None
    manifest = await world.manifest(first)
    assert manifest.action == "rollback"
    await world.report(first, manifest, "rolled_back")
    # The silent one never confirms: the rollback deadline ends it.
    await world.pass_deadline(second["id"])
    done = await world.wait_status(second["id"], "rolled_back")
    outcomes = {t["agent_id"]: t["status"] for t in done["targets"] if t["phase"] == "rollback"}
    assert outcomes == {first["agent_id"]: "confirmed", silent["agent_id"]: "unreachable"}
    assert done["status_reason"] == "previous bundle restored: 1 confirmed, 1 unreachable"
    # The silent agent returns and converges to the desired (restored) bundle.
    env = await stack.ok("GET", world.tree.env_path, world.tree.owner)
    assert env["current_deployment_id"] == base["id"]
    back = await world.manifest(silent)
    assert (back.deployment_id, back.action) == (base["id"], "deploy")
    assert back.bundle_digest == env["desired_bundle_digest"]
    # The cap is free at once: a new deployment is accepted.
    assert (await world.deploy()).status_code == 201


async def test_the_cap_counts_only_deployments_that_can_progress_and_names_them(
    stack: Stack,
) -> None:
    world = await make_world(stack, agents=1, max_inflight_deployments=1, rollback_policy="manual")
    base = (await world.deploy()).json()
    await world.activate_all(base["id"])
    failing = (await world.deploy()).json()
    await world.wait_status(failing["id"], "deploying")
    refused = await world.deploy()
    assert refused.status_code == 429
    assert f"{failing['id']} (deploying)" in refused.json()["detail"]
    agent = world.agents[0]
    await world.report(agent, await world.manifest(agent), "failed", "health_check_failed: 1")
    await world.wait_status(failing["id"], "failed")
    # Failed waits for nothing: it no longer holds the cap.
    assert (await world.deploy()).status_code == 201


async def test_bad_cancel_requests_are_problems_and_change_nothing(stack: Stack) -> None:
    world = await make_world(stack, agents=1, approvals_required=1)
    created = (await world.deploy()).json()
    path = f"{world.tree.env_path}/deployments/{created['id']}/cancel"
    cases: list[tuple[str | None, dict[str, Any], int]] = [
        (None, {"json": {"reason": "x", "extra": 1}}, 400),
        (None, {"json": {"reason": "x" * 2001}}, 400),
        (None, {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
        ("anonymous", {"json": {}}, 401),
    ]
    for who, kwargs, status in cases:
        actor = None if who == "anonymous" else world.tree.owner
        response = await stack.call("POST", path, actor, **kwargs)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
    missing = await stack.call(
        "POST", f"{world.tree.env_path}/deployments/dep_missing/cancel", world.tree.owner
    )
    assert missing.status_code == 404
    detail = await world.detail(created["id"])
    assert detail["status"] == "pending_approval"
    assert len(detail["events"]) == 1
    bad_filter = await stack.call(
        "GET",
        f"{world.tree.env_path}/deployments",
        world.tree.owner,
        params={"superseded": "maybe"},
    )
    assert bad_filter.status_code == 400
    assert bad_filter.headers["content-type"] == "application/problem+json"
