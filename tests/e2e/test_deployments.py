"""Deployments end to end: a real control plane, two real agents, approvals, failure, rollback."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import clean_env, start_server
from tests.e2e.fleet import (
    FAST_AGENT_SERVER_ENV,
    AgentProcess,
    Tenant,
    bootstrap_tenant,
    start_agent,
    wait_for,
)

PLAN: dict[str, Any] = {
    "name": "orders",
    "target": "SingleRing",
    "stages": [
        {"id": "decode"},
        {"id": "enrich", "depends_on": [0]},
        {"id": "publish", "depends_on": [1]},
    ],
    "constraints": {"shards": 1, "ordering": "strict"},
    "single_ring": {"producer": "single", "scheduling": "dedicated"},
}
# Agent "b" refuses any spec named "broken"; agent "a" takes its time activating "slow" specs.
HEALTH_CHECK_B = "sh -c '! grep -q pipeline.name=broken \"$BYTEOR_CANDIDATE_SPEC\"'"
ACTIVATE_A = "sh -c 'if grep -q pipeline.name=slow \"$BYTEOR_SPEC\"; then sleep 4; fi'"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Tenant, dict[str, AgentProcess], dict[str, Path]]]:
    server = start_server(
        tmp_path, clean_env(**FAST_AGENT_SERVER_ENV, BYTEOR_CLOUD_JOB_POLL_INTERVAL_SECONDS="0.1")
    )
    agents: dict[str, AgentProcess] = {}
    try:
        tenant = bootstrap_tenant(server)
        tenant.api(
            "PUT",
            tenant.env_url,
            json={
                "approvals_required": 2,
                "rollback_policy": "automatic",
                "approval_window_seconds": 60,
            },
        )
        specs = {}
        for name, extra in (
            ("a", {"BYTEOR_ACTIVATION_COMMAND": ACTIVATE_A}),
            ("b", {"BYTEOR_HEALTH_CHECK_COMMAND": HEALTH_CHECK_B}),
        ):
            token = tenant.enrollment_token()["token"]
            specs[name] = tmp_path / f"etc-{name}" / "spec.kv"
            agents[name] = start_agent(
                tmp_path,
                {
                    "BYTEOR_API_BASE_URL": server.url,
                    "BYTEOR_ENROLLMENT_TOKEN": token,
                    "BYTEOR_ORG_ID": tenant.org_id,
                    "BYTEOR_PROJECT_ID": tenant.project_id,
                    "BYTEOR_ENVIRONMENT_ID": tenant.env_id,
                    "BYTEOR_AGENT_NAME": name,
                    "BYTEOR_STATE_DIR": str(tmp_path / f"state-{name}"),
                    "BYTEOR_SPEC": str(specs[name]),
                    "BYTEOR_HEARTBEAT_INTERVAL_SECONDS": "1",
                    "BYTEOR_DEPLOYMENT_WAIT_SECONDS": "2",
                    **extra,
                },
                name=f"agent-{name}",
            )
        wait_for(
            lambda: len([a for a in tenant.agents() if a["status"] == "online"]) == 2,
            what="two agents online",
        )
        yield tenant, agents, specs
    finally:
        for agent in agents.values():
            agent.stop()
        server.stop()


def approver(tenant: Tenant, name: str) -> dict[str, str]:
    created = tenant.api(
        "POST",
        f"{tenant.server.url}/api/v1/orgs/{tenant.org_id}/service-accounts",
        json={"name": name, "role": "approver"},
    )
    return {"Authorization": f"Bearer {created['token']}"}


def release(tenant: Tenant, plan_name: str) -> str:
    draft = tenant.api(
        "POST",
        f"{tenant.env_url}/drafts",
        json={"name": f"d-{plan_name}", "plan": PLAN | {"name": plan_name}},
    )
    version = tenant.api("POST", f"{tenant.env_url}/drafts/{draft['id']}/version")
    deployment = tenant.api(
        "POST", f"{tenant.env_url}/deployments", json={"pipeline_version_id": version["id"]}
    )
    assert deployment["status"] == "pending_approval"
    return str(deployment["id"])


def decide(
    tenant: Tenant, who: dict[str, str], deployment_id: str, decision: str = "approve"
) -> httpx.Response:
    return httpx.post(
        f"{tenant.env_url}/approvals",
        headers=who,
        json={"deployment_id": deployment_id, "decision": decision},
    )


def status_of(tenant: Tenant, deployment_id: str) -> dict[str, Any]:
    detail: dict[str, Any] = tenant.api("GET", f"{tenant.env_url}/deployments/{deployment_id}")
    return detail


def settle(
    tenant: Tenant, deployment_id: str, *statuses: str, timeout: float = 60
) -> dict[str, Any]:
    result: dict[str, Any] = wait_for(
        lambda: (d := status_of(tenant, deployment_id))["status"] in statuses and d,
        timeout=timeout,
        what=f"deployment {deployment_id} to reach {statuses}",
    )
    return result


def name_in(spec: Path) -> str | None:
    if not spec.exists():
        return None
    return spec.read_text().splitlines()[1].removeprefix("pipeline.name=")


def test_approval_gated_rollout_failure_and_automatic_rollback(
    fleet: tuple[Tenant, dict[str, AgentProcess], dict[str, Path]],
) -> None:
    tenant, agents, specs = fleet
    first_approver, second_approver = approver(tenant, "alice"), approver(tenant, "bob")

    # 1. Two approvals; the requester (the owner) may not approve their own deployment.
    v1 = release(tenant, "orders")
    assert decide(tenant, tenant.headers, v1).status_code == 403
    assert decide(tenant, first_approver, v1).status_code == 201
    assert status_of(tenant, v1)["status"] == "pending_approval"
    assert decide(tenant, second_approver, v1).status_code == 201
    active = settle(tenant, v1, "active", "failed")
    assert active["status"] == "active", active
    assert {name_in(specs["a"]), name_in(specs["b"])} == {"orders"}
    assert [e["to_status"] for e in active["events"]] == [
        "pending_approval",
        "approved",
        "building",
        "deploying",
        "active",
    ]

    # 2. A release agent b's health check refuses: failed, then rolled back automatically.
    v2 = release(tenant, "broken")
    decide(tenant, first_approver, v2)
    decide(tenant, second_approver, v2)
    rolled = settle(tenant, v2, "rolled_back", "active")
    assert rolled["status"] == "rolled_back", rolled
    statuses = [e["to_status"] for e in rolled["events"]]
    assert statuses[-3:] == ["failed", "rolling_back", "rolled_back"]
    failure = next(e for e in rolled["events"] if e["to_status"] == "failed")
    assert "health_check_failed" in failure["reason"]
    wait_for(
        lambda: name_in(specs["a"]) == "orders" and name_in(specs["b"]) == "orders",
        what="previous spec restored",
    )

    for agent in agents.values():
        assert agent.process.poll() is None, agent.output()


def test_expiry_and_revocation_mid_rollout(
    fleet: tuple[Tenant, dict[str, AgentProcess], dict[str, Path]],
) -> None:
    tenant, _agents, specs = fleet
    first_approver, second_approver = approver(tenant, "carol"), approver(tenant, "dave")
    base = release(tenant, "orders")
    decide(tenant, first_approver, base)
    decide(tenant, second_approver, base)
    settle(tenant, base, "active")

    # An undecided approval expires: the deployment is denied.
    stale = release(tenant, "never")
    database = tenant.server.cwd / "byteor-data" / "byteor.db"
    with sqlite3.connect(database, timeout=30) as db:
        db.execute(
            "UPDATE approvals SET expires_at = '2000-01-01 00:00:00.000000' WHERE deployment_id = ?",
            (stale,),
        )
        db.execute(
            "UPDATE deployments SET deadline_at = '2000-01-01 00:00:00.000000' WHERE id = ?",
            (stale,),
        )
        db.execute(
            "UPDATE jobs SET run_after = '2000-01-01 00:00:00.000000' "
            "WHERE kind = 'deployment.deadline' AND state = 'queued'"
        )
    denied = settle(tenant, stale, "denied")
    assert "expired" in denied["status_reason"]

    # Revoking an approval while agent a is still activating rolls the deployment back.
    slow = release(tenant, "slow")
    first = decide(tenant, first_approver, slow).json()
    decide(tenant, second_approver, slow)
    settle(tenant, slow, "deploying")
    revoked = httpx.post(f"{tenant.env_url}/approvals/{first['id']}/revoke", headers=first_approver)
    assert revoked.status_code == 200, revoked.text
    final = settle(tenant, slow, "rolled_back")
    assert (
        "revoked" in next(e for e in final["events"] if e["to_status"] == "rolling_back")["reason"]
    )
    wait_for(
        lambda: name_in(specs["a"]) == "orders" and name_in(specs["b"]) == "orders",
        what="spec restored after revoke",
    )
