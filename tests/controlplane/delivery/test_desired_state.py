"""Desired state and convergence through the real API: late, failed, rebuilt and lost hosts."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from controlplane.app import create_app
from controlplane.db.models import AgentRow, DeploymentTargetRow
from controlplane.db.types import utcnow
from controlplane.settings import DeploymentMode
from tests.conftest import Stack, in_process_client
from tests.controlplane.agents.helpers import agent_headers
from tests.controlplane.delivery.world import World, make_world

pytestmark = pytest.mark.anyio


async def _deployment_get(world: World, agent: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = await world.stack.ok(
        "GET", f"/api/v1/agents/{agent['agent_id']}/deployment", headers=agent_headers(agent)
    )
    return body


async def _age_targets(stack: Stack, agent_id: str, seconds: float) -> None:
    """Pretend the agent's manifests were last touched ``seconds`` ago."""
    async with stack.database.sessionmaker() as session:
        await session.execute(
            update(DeploymentTargetRow)
            .where(DeploymentTargetRow.agent_id == agent_id)
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )
        await session.commit()


async def _agents(world: World) -> dict[str, dict[str, Any]]:
    listed = await world.stack.ok("GET", f"{world.tree.env_path}/agents", world.tree.owner)
    return {a["id"]: a for a in listed["items"]}


async def test_a_host_enrolled_after_the_rollout_gets_the_current_deployment(stack: Stack) -> None:
    world = await make_world(stack, agents=1)
    v1 = (await world.deploy()).json()
    await world.activate_all(v1["id"])
    env = await stack.ok("GET", world.tree.env_path, world.tree.owner)
    assert env["current_deployment_id"] == v1["id"]
    digest = env["desired_bundle_digest"]
    assert digest.startswith("sha256:")

    late = await world.add_agent("late")
    agents = await _agents(world)
    assert agents[late["agent_id"]]["in_sync"] is False
    assert agents[late["agent_id"]]["desired_bundle_digest"] == digest
    beat = await world.heartbeat(late)
    assert beat["deployment_pending"] is True

    manifest = await world.manifest(late)
    assert (manifest.deployment_id, manifest.bundle_digest, manifest.sequence) == (
        v1["id"],
        digest,
        1,
    )
    # Asking again does not issue another manifest.
    assert (await world.manifest(late)).sequence == 1
    assert (await world.report(late, manifest, "active")).status_code == 204
    await world.heartbeat(late, digest)
    agents = await _agents(world)
    assert all(a["in_sync"] and a["active_bundle_digest"] == digest for a in agents.values())
    listed = await stack.ok("GET", f"{world.tree.env_path}/deployments", world.tree.owner)
    assert [d["id"] for d in listed["items"]] == [v1["id"]]  # no new deployment
    detail = await world.detail(v1["id"])
    assert detail["status"] == "active"
    assert {t["agent_id"] for t in detail["targets"]} == {a["agent_id"] for a in world.agents}


async def test_an_agent_that_failed_is_retried_with_backoff_never_in_a_loop(stack: Stack) -> None:
    world = await make_world(stack, agents=1)
    v1 = (await world.deploy()).json()
    await world.activate_all(v1["id"])
    late = await world.add_agent("flaky")
    first = await world.manifest(late)
    assert (
        await world.report(late, first, "failed", "activation_failed: exit 1")
    ).status_code == 204
    # Within the pause, asking again gives nothing to apply, never a fresh manifest: the answer
    # names the newest manifest the agent was issued, the one it failed.
    for _ in range(5):
        assert await _deployment_get(world, late) == {"manifest": None, "sequence": first.sequence}
    await _age_targets(stack, late["agent_id"], stack.settings.convergence_retry_seconds + 1)
    second = await world.manifest(late)
    assert second.sequence == first.sequence + 1
    assert second.deployment_id == v1["id"]
    target = next(
        t for t in (await world.detail(v1["id"]))["targets"] if t["agent_id"] == late["agent_id"]
    )
    assert (target["status"], target["attempts"]) == ("issued", 2)
    # The second failure waits twice as long: one base pause is not enough any more.
    await world.report(late, second, "failed", "activation_failed: exit 1")
    await _age_targets(stack, late["agent_id"], stack.settings.convergence_retry_seconds + 1)
    assert (await _deployment_get(world, late))["manifest"] is None
    await _age_targets(stack, late["agent_id"], 2 * stack.settings.convergence_retry_seconds + 1)
    assert (await world.manifest(late)).sequence == second.sequence + 1
    # The fleet's deployment stays active: one host failing to converge does not fail it.
    assert (await world.detail(v1["id"]))["status"] == "active"


async def test_a_rebuilt_host_converges(stack: Stack) -> None:
    world = await make_world(stack, agents=1)
    v1 = (await world.deploy()).json()
    await world.activate_all(v1["id"])
    digest = (await stack.ok("GET", world.tree.env_path, world.tree.owner))["desired_bundle_digest"]
    old = world.agents[0]

    # Same credentials, empty state directory: it says it runs nothing, well after confirming.
    await world.heartbeat(old, None)
    assert (await _deployment_get(world, old))["manifest"] is None  # within the grace: no reissue
    await _age_targets(stack, old["agent_id"], 3600)
    reissued = await world.manifest(old)
    assert (reissued.sequence, reissued.bundle_digest) == (2, digest)

    # Enrolled again from scratch: a new agent, which gets the desired bundle at once.
    again = await world.add_agent("rebuilt")
    manifest = await world.manifest(again)
    assert (manifest.deployment_id, manifest.bundle_digest) == (v1["id"], digest)


async def test_an_agent_in_sync_under_another_deployment_gets_nothing_new(stack: Stack) -> None:
    world = await make_world(stack, agents=1)
    v1 = (await world.deploy()).json()
    await world.activate_all(v1["id"])
    digest = (await stack.ok("GET", world.tree.env_path, world.tree.owner))["desired_bundle_digest"]
    agent = await world.add_agent("preloaded")
    await world.heartbeat(agent, digest)  # already runs the desired bundle
    assert await _deployment_get(world, agent) == {"manifest": None, "sequence": 0}
    assert (await _agents(world))[agent["agent_id"]]["in_sync"] is True


async def test_rolling_back_a_superseded_deployment_is_409_and_changes_nothing(
    stack: Stack,
) -> None:
    world = await make_world(stack, agents=1)
    x = (await world.deploy()).json()
    await world.activate_all(x["id"])
    y = (await world.deploy()).json()
    await world.activate_all(y["id"])
    agent = world.agents[0]
    assert (await world.detail(x["id"]))["superseded_by"] == y["id"]
    current = await stack.ok(
        "GET",
        f"{world.tree.env_path}/deployments",
        world.tree.owner,
        params={"status": "active", "superseded": "false"},
    )
    assert [d["id"] for d in current["items"]] == [y["id"]]
    assert (await world.detail(y["id"]))["previous_deployment_id"] == x["id"]
    before = await _deployment_get(world, agent)

    refused = await stack.call(
        "POST", f"{world.tree.env_path}/deployments/{x['id']}/rollback", world.tree.owner
    )
    assert refused.status_code == 409
    assert refused.headers["content-type"] == "application/problem+json"
    assert y["id"] in refused.json()["detail"]
    assert (await world.detail(x["id"]))["status"] == "active"
    assert (await world.detail(y["id"]))["status"] == "active"
    assert await _deployment_get(world, agent) == before

    # Rolling back the current one restores x, which is current again.
    started = await stack.call(
        "POST", f"{world.tree.env_path}/deployments/{y['id']}/rollback", world.tree.owner
    )
    assert started.status_code == 202
    env = await stack.ok("GET", world.tree.env_path, world.tree.owner)
    assert env["current_deployment_id"] == x["id"]
    manifest = await world.manifest(agent)
    assert (manifest.action, manifest.deployment_id) == ("rollback", y["id"])
    assert manifest.bundle_digest == env["desired_bundle_digest"]
    await world.report(agent, manifest, "rolled_back")
    done = await world.wait_status(y["id"], "rolled_back")
    assert [t["status"] for t in done["targets"] if t["phase"] == "rollback"] == ["confirmed"]
    assert (await world.detail(x["id"]))["superseded_by"] is None
    # Now y is not current: rolling it back again, or x's predecessor, is refused.
    again = await stack.call(
        "POST", f"{world.tree.env_path}/deployments/{y['id']}/rollback", world.tree.owner
    )
    assert again.status_code == 409


async def test_deleting_an_agent_mid_rollout_lets_the_others_complete(stack: Stack) -> None:
    world = await make_world(stack, agents=2)
    created = (await world.deploy()).json()
    await world.wait_status(created["id"], "deploying")
    keep, gone = world.agents
    manifest = await world.manifest(keep)
    await world.report(keep, manifest, "active")
    assert (await world.detail(created["id"]))["status"] == "deploying"
    deleted = await stack.call(
        "DELETE", f"{world.tree.env_path}/agents/{gone['agent_id']}", world.tree.owner
    )
    assert deleted.status_code == 204
    detail = await world.wait_status(created["id"], "active")
    assert detail["agent_ids"] == [keep["agent_id"]]
    assert [t["agent_id"] for t in detail["targets"]] == [keep["agent_id"]]


async def test_an_agent_enrolled_while_deploying_joins_the_rollout(stack: Stack) -> None:
    world = await make_world(stack, agents=1)
    created = (await world.deploy()).json()
    await world.wait_status(created["id"], "deploying")
    joiner = await world.add_agent("joiner")
    manifest = await world.manifest(joiner)
    assert manifest.deployment_id == created["id"]
    detail = await world.detail(created["id"])
    assert joiner["agent_id"] in detail["agent_ids"]
    for agent in world.agents:
        await world.report(agent, await world.manifest(agent), "active")
    await world.wait_status(created["id"], "active")


async def test_offline_agents_are_not_targets_and_converge_later(stack: Stack) -> None:
    world = await make_world(stack, agents=1)
    sleeper = await world.add_agent("sleeper", online=False)
    created = (await world.deploy()).json()
    detail = await world.wait_status(created["id"], "deploying")
    assert detail["agent_ids"] == [world.agents[0]["agent_id"]]
    await world.report(world.agents[0], await world.manifest(world.agents[0]), "active")
    await world.wait_status(created["id"], "active")
    # It wakes up: its first deployment check gets the desired bundle.
    await world.heartbeat(sleeper)
    manifest = await world.manifest(sleeper)
    assert manifest.deployment_id == created["id"]


async def test_two_processes_never_issue_two_manifests_for_one_agent(stack: Stack) -> None:
    """Concurrent deployment checks of late agents, against two apps on one database."""
    world = await make_world(stack, agents=1)
    v1 = (await world.deploy()).json()
    await world.activate_all(v1["id"])
    late = [await world.add_agent(f"late-{i}") for i in range(4)]
    other = create_app(stack.settings.model_copy(update={"deployment_mode": DeploymentMode.API}))
    async with other.lifespan(), in_process_client(other) as client:
        clients = [stack.client, client]

        async def check(i: int, agent: dict[str, Any]) -> int:
            response = await clients[i % 2].get(
                f"/api/v1/agents/{agent['agent_id']}/deployment", headers=agent_headers(agent)
            )
            assert response.status_code == 200, response.text
            return int(response.json()["sequence"])

        results = await asyncio.gather(*(check(i, agent) for i in range(6) for agent in late))
    assert set(results) == {1}
    async with stack.database.sessionmaker() as session:
        for agent in late:
            sequence = await session.scalar(
                select(AgentRow.manifest_sequence).where(AgentRow.id == agent["agent_id"])
            )
            assert sequence == 1
            targets = list(
                await session.scalars(
                    select(DeploymentTargetRow).where(
                        DeploymentTargetRow.agent_id == agent["agent_id"]
                    )
                )
            )
            assert [(t.deployment_id, t.attempts) for t in targets] == [(v1["id"], 1)]


async def test_a_cancelled_first_deployment_is_never_served(stack: Stack) -> None:
    world = await make_world(stack, agents=1)
    created = (await world.deploy()).json()
    await world.wait_status(created["id"], "deploying")
    cancelled = await stack.call(
        "POST", f"{world.tree.env_path}/deployments/{created['id']}/cancel", world.tree.owner
    )
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "rolled_back"  # nothing earlier to restore
    agent = world.agents[0]
    assert (await _deployment_get(world, agent))["manifest"] is None
    assert (await world.heartbeat(agent))["deployment_pending"] is False


async def test_a_failed_rollout_withdraws_manifests_no_host_took(stack: Stack) -> None:
    world = await make_world(stack, agents=2, rollback_policy="manual")
    base = (await world.deploy()).json()
    await world.activate_all(base["id"])
    broken = (await world.deploy()).json()
    await world.wait_status(broken["id"], "deploying")
    took, idle = world.agents
    await world.report(took, await world.manifest(took), "active")
    # A third agent reports failure on the broken release: it fails, manual policy.
    third = await world.add_agent("third")
    joined = await world.manifest(third)
    assert joined.deployment_id == broken["id"]
    await world.report(third, joined, "failed", "health_check_failed: 1")
    failed = await world.wait_status(broken["id"], "failed")
    statuses = {t["agent_id"]: t["status"] for t in failed["targets"]}
    assert statuses == {
        took["agent_id"]: "active",
        idle["agent_id"]: "cancelled",
        third["agent_id"]: "failed",
    }
    # The idle host never gets the failed release: it is not served any more.
    body = await _deployment_get(world, idle)
    assert body["manifest"] is None or body["manifest"]["payload"]["deployment_id"] != broken["id"]
    # A newer release becomes current and supersedes the failed one; every host converges.
    fixed = (await world.deploy()).json()
    await world.activate_all(fixed["id"])
    assert (await world.detail(broken["id"]))["superseded_by"] == fixed["id"]
    assert all(a["in_sync"] for a in (await _agents(world)).values())


async def test_the_newest_release_wins_when_rollouts_overlap(stack: Stack) -> None:
    world = await make_world(
        stack, agents=2, max_inflight_deployments=2, rollback_policy="automatic"
    )
    base = (await world.deploy()).json()
    await world.activate_all(base["id"])
    older = (await world.deploy()).json()
    await world.wait_status(older["id"], "deploying")
    newer = (await world.deploy()).json()
    await world.wait_status(newer["id"], "deploying")
    # An agent applies only its newest manifest: the newer rollout took both over.
    taken = await world.wait_status(older["id"], "active")
    assert taken["status_reason"] == "every target moved on to a newer deployment"
    assert {t["status"] for t in taken["targets"]} == {"cancelled"}
    for agent in world.agents:
        manifest = await world.manifest(agent)
        assert manifest.deployment_id == newer["id"]
        await world.report(agent, manifest, "active")
    await world.wait_status(newer["id"], "active")
    env = await stack.ok("GET", world.tree.env_path, world.tree.owner)
    assert env["current_deployment_id"] == newer["id"]
    assert (await world.detail(older["id"]))["superseded_by"] == newer["id"]
    assert (await world.detail(newer["id"]))["previous_deployment_id"] == older["id"]
    # Nothing was rolled back on the way.
    for deployment_id in (older["id"], newer["id"]):
        detail = await world.detail(deployment_id)
        assert all(t["phase"] == "deploy" for t in detail["targets"])
