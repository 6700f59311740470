from __future__ import annotations

import asyncio
import hashlib
import time
from typing import Any

import httpx
import pytest

from controlplane.db import scoped
from controlplane.delivery.grants import BundleGrants
from shared.roles import Role
from tests.conftest import Stack
from tests.controlplane.agents.helpers import agent_headers
from tests.controlplane.agents.test_hot_paths import sessions_begun
from tests.controlplane.delivery.world import make_world

pytestmark = pytest.mark.anyio


async def test_unapproved_environment_deploys_to_every_agent(stack: Stack) -> None:
    world = await make_world(stack)
    response = await world.deploy(description="first")
    assert response.status_code == 201
    deployment = response.json()
    assert deployment["status"] == "approved"
    assert deployment["agent_ids"] == sorted(a["agent_id"] for a in world.agents)

    detail = await world.wait_status(deployment["id"], "deploying")
    assert {t["agent_id"] for t in detail["targets"]} == set(deployment["agent_ids"])
    assert all(t["status"] == "issued" and t["sequence"] == 1 for t in detail["targets"])
    assert detail["rollout_deadline_at"] is not None

    agent = world.agents[0]
    manifest = await world.manifest(agent)
    assert manifest.agent_id == agent["agent_id"]
    assert manifest.environment_id == world.tree.env_id
    assert manifest.sequence == 1
    assert manifest.action == "deploy"
    assert manifest.expires_at > time.time()
    archive = await stack.call(
        "GET",
        f"/api/v1/agents/{agent['agent_id']}/bundles/{manifest.bundle_digest}",
        headers=agent_headers(agent),
    )
    assert archive.status_code == 200
    assert "sha256:" + hashlib.sha256(archive.content).hexdigest() == manifest.bundle_digest
    assert len(archive.content) == manifest.bundle_size

    heartbeat = await stack.ok(
        "POST",
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        headers=agent_headers(agent),
        json={"sequence": 1},
    )
    assert heartbeat["deployment_pending"] is True

    await world.activate_all(deployment["id"])
    final = await world.detail(deployment["id"])
    assert [(e["from_status"], e["to_status"]) for e in final["events"]] == [
        (None, "approved"),
        ("approved", "building"),
        ("building", "deploying"),
        ("deploying", "active"),
    ]
    assert final["events"][0]["actor"] == world.tree.owner.user_id
    assert all(t["status"] == "active" for t in final["targets"])


async def test_two_approvals_without_self_approval(stack: Stack) -> None:
    world = await make_world(stack, approvals_required=2)
    deployer = await stack.member(world.tree, Role.DEPLOYER)
    first, second = (
        await stack.member(world.tree, Role.APPROVER),
        await stack.member(world.tree, Role.APPROVER),
    )
    viewer = await stack.member(world.tree, Role.VIEWER)
    created = (await world.deploy(deployer)).json()
    assert created["status"] == "pending_approval"
    approvals = await stack.ok("GET", f"{world.tree.env_path}/approvals", world.tree.owner)
    mine = [a for a in approvals["items"] if a["deployment_id"] == created["id"]]
    assert [a["status"] for a in mine] == ["pending", "pending"]

    path = f"{world.tree.env_path}/approvals"
    body = {"deployment_id": created["id"], "decision": "approve"}
    own = await stack.call("POST", path, deployer, json=body)
    assert own.status_code == 403
    assert "self-approval" in own.json()["detail"]
    assert (await stack.call("POST", path, viewer, json=body)).status_code == 403

    granted = await stack.call("POST", path, first, json=body | {"comment": "lgtm"})
    assert granted.status_code == 201
    assert granted.json()["status"] == "approved"
    assert (await stack.call("POST", path, first, json=body)).status_code == 409
    assert (await world.detail(created["id"]))["status"] == "pending_approval"

    assert (await stack.call("POST", path, second, json=body)).status_code == 201
    detail = await world.wait_status(created["id"], "deploying")
    assert ("pending_approval", "approved") in [
        (e["from_status"], e["to_status"]) for e in detail["events"]
    ]


async def test_deny_is_terminal(stack: Stack) -> None:
    world = await make_world(stack, approvals_required=1)
    created = (await world.deploy()).json()
    approver = await stack.member(world.tree, Role.APPROVER)
    path = f"{world.tree.env_path}/approvals"
    denied = await stack.call(
        "POST",
        path,
        approver,
        json={"deployment_id": created["id"], "decision": "deny", "comment": "not today"},
    )
    assert denied.status_code == 201
    detail = await world.detail(created["id"])
    assert detail["status"] == "denied"
    assert "not today" in detail["status_reason"]
    other = await stack.member(world.tree, Role.APPROVER)
    late = await stack.call(
        "POST", path, other, json={"deployment_id": created["id"], "decision": "approve"}
    )
    assert late.status_code == 409
    rollback = await stack.call(
        "POST", f"{world.tree.env_path}/deployments/{created['id']}/rollback", world.tree.owner
    )
    assert rollback.status_code == 409


async def test_undecided_approvals_expire_and_deny(stack: Stack) -> None:
    world = await make_world(stack, approvals_required=1, approval_window_seconds=60)
    created = (await world.deploy()).json()
    await world.pass_deadline(created["id"])
    detail = await world.wait_status(created["id"], "denied")
    assert "expired" in detail["status_reason"]
    approvals = await stack.ok("GET", f"{world.tree.env_path}/approvals", world.tree.owner)
    assert {a["status"] for a in approvals["items"] if a["deployment_id"] == created["id"]} == {
        "expired"
    }


async def test_revoking_an_approval_before_rollout_denies(stack: Stack) -> None:
    world = await make_world(stack, approvals_required=2)
    created = (await world.deploy()).json()
    approver = await stack.member(world.tree, Role.APPROVER)
    granted = await stack.ok(
        "POST",
        f"{world.tree.env_path}/approvals",
        approver,
        json={"deployment_id": created["id"], "decision": "approve"},
    )
    stranger = await stack.member(world.tree, Role.APPROVER)
    path = f"{world.tree.env_path}/approvals/{granted['id']}/revoke"
    assert (await stack.call("POST", path, stranger)).status_code == 403
    revoked = await stack.call("POST", path, approver)
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    assert (await world.detail(created["id"]))["status"] == "denied"
    assert (await stack.call("POST", path, approver)).status_code == 409


async def test_revoking_mid_rollout_rolls_back(stack: Stack) -> None:
    world = await make_world(stack, approvals_required=1)
    first = (await world.deploy()).json()
    approver = await stack.member(world.tree, Role.APPROVER)
    path = f"{world.tree.env_path}/approvals"
    await stack.ok(
        "POST", path, approver, json={"deployment_id": first["id"], "decision": "approve"}
    )
    await world.activate_all(first["id"])

    second = (await world.deploy()).json()
    granted = await stack.ok(
        "POST", path, approver, json={"deployment_id": second["id"], "decision": "approve"}
    )
    await world.wait_status(second["id"], "deploying")
    await stack.ok("POST", f"{path}/{granted['id']}/revoke", approver)
    detail = await world.wait_status(second["id"], "rolling_back")
    rollback_targets = [t for t in detail["targets"] if t["phase"] == "rollback"]
    assert len(rollback_targets) == 2
    for agent in world.agents:
        manifest = await world.manifest(agent)
        assert manifest.action == "rollback"
        assert (await world.report(agent, manifest, "rolled_back")).status_code == 204
    await world.wait_status(second["id"], "rolled_back")


async def test_failure_rolls_back_automatically_to_the_previous_bundle(stack: Stack) -> None:
    world = await make_world(stack, rollback_policy="automatic")
    first = (await world.deploy()).json()
    await world.activate_all(first["id"])
    previous = (await stack.ok("GET", world.tree.env_path, world.tree.owner))[
        "desired_bundle_digest"
    ]

    await stack.ok(
        "PUT", world.tree.env_path, world.tree.owner, json={"runtime_config": {"changed": True}}
    )
    second = (await world.deploy()).json()
    await world.wait_status(second["id"], "deploying")
    ok_agent, bad_agent = world.agents
    ok_manifest = await world.manifest(ok_agent)
    assert ok_manifest.bundle_digest != previous
    await world.report(ok_agent, ok_manifest, "active")
    bad_manifest = await world.manifest(bad_agent)
    await world.report(bad_agent, bad_manifest, "failed", "health_check_failed: exit 1")

    detail = await world.wait_status(second["id"], "rolling_back")
    statuses = [e["to_status"] for e in detail["events"]]
    assert statuses[-2:] == ["failed", "rolling_back"]
    assert "health_check_failed" in detail["events"][-2]["reason"]
    for agent in world.agents:
        manifest = await world.manifest(agent)
        assert manifest.action == "rollback"
        assert manifest.bundle_digest == previous
        assert manifest.sequence == 3
        await world.report(agent, manifest, "rolled_back")
    final = await world.wait_status(second["id"], "rolled_back")
    assert final["events"][-1]["reason"] == "previous bundle restored: 2 confirmed"


async def test_manual_policy_waits_for_an_operator_rollback(stack: Stack) -> None:
    world = await make_world(stack, agents=1)
    first = (await world.deploy()).json()
    await world.activate_all(first["id"])
    second = (await world.deploy()).json()
    await world.wait_status(second["id"], "deploying")
    agent = world.agents[0]
    await world.report(agent, await world.manifest(agent), "failed", "activation_failed")
    failed = await world.wait_status(second["id"], "failed")
    assert failed["events"][-1]["to_status"] == "failed"
    viewer = await stack.member(world.tree, Role.VIEWER)
    rollback_path = f"{world.tree.env_path}/deployments/{second['id']}/rollback"
    assert (await stack.call("POST", rollback_path, viewer)).status_code == 403
    started = await stack.call(
        "POST", rollback_path, world.tree.owner, json={"reason": "bad build"}
    )
    assert started.status_code == 202
    assert started.json()["status"] == "rolling_back"
    manifest = await world.manifest(agent)
    await world.report(agent, manifest, "rolled_back")
    await world.wait_status(second["id"], "rolled_back")
    again = await stack.call("POST", rollback_path, world.tree.owner)
    assert again.status_code == 409


async def test_inflight_cap_answers_429_with_retry_after(stack: Stack) -> None:
    world = await make_world(stack, approvals_required=1, max_inflight_deployments=1)
    assert (await world.deploy()).status_code == 201
    refused = await world.deploy()
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == str(stack.settings.inflight_retry_after_seconds)
    assert refused.headers["content-type"] == "application/problem+json"


async def test_rollout_deadline_fails_the_deployment(stack: Stack) -> None:
    world = await make_world(stack, agents=1)
    created = (await world.deploy()).json()
    await world.wait_status(created["id"], "deploying")
    await world.pass_deadline(created["id"])
    detail = await world.wait_status(created["id"], "failed")
    assert detail["status_reason"] == "rollout deadline passed; 1 target(s) did not report"
    assert [t["status"] for t in detail["targets"]] == ["unreachable"]


async def test_long_poll_waits_then_304_and_etag_moves(stack: Stack) -> None:
    world = await make_world(stack, agents=1)
    agent = world.agents[0]
    url = f"/api/v1/agents/{agent['agent_id']}/deployment"
    empty = await stack.call("GET", url, headers=agent_headers(agent))
    assert empty.json() == {"manifest": None, "sequence": 0}
    etag = empty.headers["etag"]
    started = time.monotonic()
    unchanged = await stack.call(
        "GET", url, headers=agent_headers(agent) | {"If-None-Match": etag}, params={"wait": 1}
    )
    assert unchanged.status_code == 304
    assert time.monotonic() - started >= 0.9

    waiting = asyncio.create_task(
        stack.call(
            "GET", url, headers=agent_headers(agent) | {"If-None-Match": etag}, params={"wait": 10}
        )
    )
    await asyncio.sleep(0.2)
    created = (await world.deploy()).json()
    woke = await asyncio.wait_for(waiting, timeout=10)
    assert woke.status_code == 200
    assert woke.headers["etag"] != etag
    assert woke.json()["sequence"] == 1
    assert created["id"]


async def test_agents_only_reach_their_own_manifests_and_bundles(stack: Stack) -> None:
    world = await make_world(stack)
    created = (await world.deploy(agent_ids=[world.agents[0]["agent_id"]])).json()
    await world.wait_status(created["id"], "deploying")
    mine, other = world.agents
    manifest = await world.manifest(mine)
    bundle_url = f"/api/v1/agents/{other['agent_id']}/bundles/{manifest.bundle_digest}"
    assert (await stack.call("GET", bundle_url, headers=agent_headers(other))).status_code == 404
    wrong_sequence = await stack.call(
        "POST",
        f"/api/v1/agents/{other['agent_id']}/deployment",
        headers=agent_headers(other),
        json={"deployment_id": created["id"], "sequence": manifest.sequence, "status": "active"},
    )
    assert wrong_sequence.status_code == 404
    bad_status = await world.report(mine, manifest, "rolled_back")
    assert bad_status.status_code == 409


async def _download(
    stack: Stack, agent: dict[str, Any], digest: str
) -> tuple[httpx.Response, set[int]]:
    """Download a bundle as ``agent``, with the sessions the request began."""
    url = f"/api/v1/agents/{agent['agent_id']}/bundles/{digest}"
    with sessions_begun() as begun:
        response = await stack.call("GET", url, headers=agent_headers(agent))
    return response, begun


async def _warm_key(stack: Stack, agent: dict[str, Any]) -> None:
    """Cache the agent's key with a request that grants nothing (a download would)."""
    await stack.call("GET", f"/api/v1/agents/{agent['agent_id']}", headers=agent_headers(agent))


def _is_the_archive(archive: httpx.Response, digest: str) -> bool:
    return archive.status_code == 200 and (
        "sha256:" + hashlib.sha256(archive.content).hexdigest() == digest
    )


async def test_a_download_right_after_its_poll_reads_nothing_from_the_database(
    stack: Stack,
) -> None:
    """In a rollout the whole fleet downloads at once: the poll that handed out the manifest
    grants the download, so it takes no pooled connection (and none of the pool's waits)."""
    world = await make_world(stack, agents=1)
    created = (await world.deploy()).json()
    await world.wait_status(created["id"], "deploying")
    (agent,) = world.agents
    manifest = await world.manifest(agent)
    await _warm_key(stack, agent)
    archive, begun = await _download(stack, agent, manifest.bundle_digest)
    assert _is_the_archive(archive, manifest.bundle_digest)
    assert begun == set()


async def test_a_download_whose_poll_ran_elsewhere_is_checked_in_the_database(
    stack: Stack,
) -> None:
    """Another process (or this one before a restart) handed out the manifest: the target row
    grants the download, and nothing granted to one agent opens it to another."""
    world = await make_world(stack)
    created = (await world.deploy(agent_ids=[world.agents[0]["agent_id"]])).json()
    await world.wait_status(created["id"], "deploying")
    mine, other = world.agents
    manifest = await world.manifest(mine)
    stack.app.state.bundle_grants = BundleGrants()  # what a process that never polled knows
    await _warm_key(stack, mine)
    archive, begun = await _download(stack, mine, manifest.bundle_digest)
    assert _is_the_archive(archive, manifest.bundle_digest)
    assert len(begun) == 1  # the target row, read once
    again, begun = await _download(stack, mine, manifest.bundle_digest)
    assert again.status_code == 200
    assert begun == set()  # and remembered
    refused, _ = await _download(stack, other, manifest.bundle_digest)
    assert refused.status_code == 404
    assert refused.headers["content-type"] == "application/problem+json"


async def test_a_bundle_served_from_memory_is_refused_once_its_blob_is_gone(
    stack: Stack,
) -> None:
    """Downloads come from memory after the first; a blob deleted on disk (by another process)
    must still answer 404, not the copy."""
    world = await make_world(stack, agents=1)
    created = (await world.deploy()).json()
    await world.wait_status(created["id"], "deploying")
    (agent,) = world.agents
    manifest = await world.manifest(agent)
    url = f"/api/v1/agents/{agent['agent_id']}/bundles/{manifest.bundle_digest}"
    for _ in range(2):
        archive = await stack.call("GET", url, headers=agent_headers(agent))
        assert archive.status_code == 200
        assert "sha256:" + hashlib.sha256(archive.content).hexdigest() == manifest.bundle_digest
        assert archive.headers["content-type"] == "application/gzip"
        assert archive.headers["etag"] == f'"{manifest.bundle_digest}"'
    stack.app.state.blobs.path_for(manifest.bundle_digest).unlink()
    gone = await stack.call("GET", url, headers=agent_headers(agent))
    assert gone.status_code == 404
    assert gone.headers["content-type"] == "application/problem+json"
    assert manifest.bundle_digest in gone.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"pipeline_version_id": "ver_x", "config_bundle_id": "cfb_x"},
        {"pipeline_version_id": "ver_missing"},
        {"config_bundle_id": "cfb_missing"},
        {"agent_ids": ["agt_nope"]},
    ],
)
async def test_bad_deployment_requests(stack: Stack, body: dict[str, object]) -> None:
    world = await make_world(stack, agents=1)
    if "agent_ids" in body:
        body = body | {"pipeline_version_id": world.version_id}
    response = await stack.call(
        "POST", f"{world.tree.env_path}/deployments", world.tree.owner, json=body
    )
    assert response.status_code in (400, 404), response.text
    listed = await stack.ok("GET", f"{world.tree.env_path}/deployments", world.tree.owner)
    assert listed["items"] == []


async def test_a_deployment_with_no_agent_online_sets_the_desired_state(stack: Stack) -> None:
    world = await make_world(stack, agents=0)
    response = await world.deploy()
    assert response.status_code == 201
    detail = await world.wait_status(response.json()["id"], "active")
    assert detail["targets"] == []
    assert detail["status_reason"] == "no agent was online; agents converge when they check in"
    env = await stack.ok("GET", world.tree.env_path, world.tree.owner)
    assert env["current_deployment_id"] == detail["id"]
    assert env["desired_bundle_digest"] is not None
    # The first host enrolled afterwards gets the desired bundle, with no new deployment.
    agent = await world.add_agent("late")
    manifest = await world.manifest(agent)
    assert manifest.deployment_id == detail["id"]
    assert manifest.bundle_digest == env["desired_bundle_digest"]


async def test_unknown_status_filter_is_400(stack: Stack) -> None:
    world = await make_world(stack, agents=0)
    listed = await stack.call(
        "GET", f"{world.tree.env_path}/deployments", world.tree.owner, params={"status": "bogus"}
    )
    assert listed.status_code == 400


async def test_a_bundle_streams_with_no_transaction_held(stack: Stack) -> None:
    world = await make_world(stack, agents=1)
    deployment = (await world.deploy()).json()
    await world.wait_status(deployment["id"], "deploying")
    agent = world.agents[0]
    manifest = await world.manifest(agent)
    stack.app.state.bundle_grants = BundleGrants()  # the download reads its grant: a session
    held: list[bool | None] = []

    async def watched(scope: Any, receive: Any, send: Any) -> None:
        async def observed(message: Any) -> None:
            if message["type"] == "http.response.body" and message.get("body") and not held:
                session = scope.get("state", {}).get(scoped._KEY)
                held.append(None if session is None else session.in_transaction())
            await send(message)

        await stack.app(scope, receive, observed)

    transport = httpx.ASGITransport(app=watched)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        archive = await client.get(
            f"/api/v1/agents/{agent['agent_id']}/bundles/{manifest.bundle_digest}",
            headers=agent_headers(agent),
        )
    assert archive.status_code == 200
    assert len(archive.content) == manifest.bundle_size
    assert held == [False]  # the request's session exists but holds no transaction (connection)
