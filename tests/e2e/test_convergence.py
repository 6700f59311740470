"""Desired state with real processes: late, rebuilt and stopped hosts all converge.

A real control plane (``byteor-controlplane serve`` on SQLite) and real ``byteor-agent run``
processes that verify and activate every manifest as in production.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Server, clean_env, start_server
from tests.e2e.fleet import (
    FAST_AGENT_SERVER_ENV,
    AgentProcess,
    Tenant,
    bootstrap_tenant,
    start_agent,
    wait_for,
)
from tests.e2e.test_deployments import PLAN, name_in, settle, status_of

#: Short deadlines so a stopped agent cannot hold a deployment for long.
DEADLINES = {
    "BYTEOR_CLOUD_ROLLOUT_TIMEOUT_SECONDS": "4",
    "BYTEOR_CLOUD_ROLLBACK_TIMEOUT_SECONDS": "4",
    "BYTEOR_CLOUD_JOB_POLL_INTERVAL_SECONDS": "0.1",
}


class Hosts:
    """Starts agents of one environment, each with its own state directory and spec path."""

    def __init__(self, tenant: Tenant, directory: Path) -> None:
        self.tenant = tenant
        self.directory = directory
        self.running: dict[str, AgentProcess] = {}

    def spec(self, name: str) -> Path:
        return self.directory / f"etc-{name}" / "spec.kv"

    def state(self, name: str) -> Path:
        return self.directory / f"state-{name}"

    def start(self, name: str, agent_name: str | None = None) -> AgentProcess:
        """Start host ``name``; it enrolls as ``agent_name`` (default ``name``) if it must."""
        token = self.tenant.enrollment_token()["token"]
        agent = start_agent(
            self.directory,
            {
                "BYTEOR_API_BASE_URL": self.tenant.server.url,
                "BYTEOR_ENROLLMENT_TOKEN": token,
                "BYTEOR_ORG_ID": self.tenant.org_id,
                "BYTEOR_PROJECT_ID": self.tenant.project_id,
                "BYTEOR_ENVIRONMENT_ID": self.tenant.env_id,
                "BYTEOR_AGENT_NAME": agent_name or name,
                "BYTEOR_STATE_DIR": str(self.state(name)),
                "BYTEOR_SPEC": str(self.spec(name)),
                "BYTEOR_HEARTBEAT_INTERVAL_SECONDS": "1",
                "BYTEOR_DEPLOYMENT_WAIT_SECONDS": "2",
            },
            name=f"agent-{name}",
        )
        self.running[name] = agent
        return agent

    def stop_all(self) -> None:
        for agent in self.running.values():
            agent.stop()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[Server, Tenant, Hosts]]:
    server = start_server(tmp_path, clean_env(**FAST_AGENT_SERVER_ENV, **DEADLINES))
    hosts: Hosts | None = None
    try:
        tenant = bootstrap_tenant(server)
        tenant.api("PUT", tenant.env_url, json={"rollback_policy": "automatic"})
        hosts = Hosts(tenant, tmp_path)
        yield server, tenant, hosts
    finally:
        if hosts is not None:
            hosts.stop_all()
        server.stop()


def deploy(tenant: Tenant, plan_name: str) -> httpx.Response:
    draft = tenant.api(
        "POST",
        f"{tenant.env_url}/drafts",
        json={"name": f"d-{plan_name}", "plan": PLAN | {"name": plan_name}},
    )
    version = tenant.api("POST", f"{tenant.env_url}/drafts/{draft['id']}/version")
    return httpx.post(
        f"{tenant.env_url}/deployments",
        headers=tenant.headers,
        json={"pipeline_version_id": version["id"]},
        timeout=10,
    )


def agent_named(tenant: Tenant, name: str) -> dict[str, Any] | None:
    return next((a for a in tenant.agents() if a["name"] == name), None)


def online(tenant: Tenant, name: str) -> bool:
    agent = agent_named(tenant, name)
    return agent is not None and agent["status"] == "online"


def test_late_and_rebuilt_hosts_converge_without_a_new_deployment(
    fleet: tuple[Server, Tenant, Hosts],
) -> None:
    _server, tenant, hosts = fleet
    hosts.start("a")
    wait_for(lambda: online(tenant, "a"), what="agent a online")
    created = deploy(tenant, "orders")
    assert created.status_code == 201, created.text
    v1 = created.json()["id"]
    settle(tenant, v1, "active")
    assert name_in(hosts.spec("a")) == "orders"

    # A host enrolled after v1 went active activates v1, with no new deployment or approval.
    hosts.start("b")
    wait_for(lambda: name_in(hosts.spec("b")) == "orders", what="late host b runs v1")
    desired = tenant.api("GET", tenant.env_url)["desired_bundle_digest"]
    wait_for(
        lambda: all(a["in_sync"] and a["active_bundle_digest"] == desired for a in tenant.agents()),
        what="every agent in sync",
    )
    listed = tenant.api("GET", f"{tenant.env_url}/deployments")["items"]
    assert [d["id"] for d in listed] == [v1]
    assert status_of(tenant, v1)["status"] == "active"

    # Rebuilt host: the state directory and spec are wiped and the host enrolls again (under a
    # new name: an explicit name already taken is a 409 until the old record is deleted).
    hosts.running["b"].stop()
    shutil.rmtree(hosts.state("b"))
    shutil.rmtree(hosts.spec("b").parent)
    hosts.start("b", agent_name="b-rebuilt")
    wait_for(lambda: name_in(hosts.spec("b")) == "orders", what="rebuilt host b runs v1 again")
    agents = tenant.api("GET", f"{tenant.env_url}/agents")["items"]
    assert len(agents) == 3  # a, the old b, the rebuilt b
    rebuilt = next(a for a in agents if a["name"] == "b-rebuilt")
    wait_for(
        lambda: next(a for a in tenant.agents() if a["id"] == rebuilt["id"])["in_sync"],
        what="the rebuilt agent in sync",
    )
    assert [d["id"] for d in tenant.api("GET", f"{tenant.env_url}/deployments")["items"]] == [v1]

    # The operator removes the replaced host's record (it would otherwise be counted online,
    # and so waited for, until its heartbeats age out), then releases v2, which supersedes v1.
    old_b = next(a for a in agents if a["name"] == "b")
    tenant.api("DELETE", f"{tenant.env_url}/agents/{old_b['id']}")
    v2 = deploy(tenant, "orders-v2").json()["id"]
    settle(tenant, v2, "active")
    wait_for(
        lambda: name_in(hosts.spec("a")) == name_in(hosts.spec("b")) == "orders-v2",
        what="both hosts run v2",
    )
    # Rolling v1 back now is refused, and no host changes.
    refused = httpx.post(
        f"{tenant.env_url}/deployments/{v1}/rollback", headers=tenant.headers, timeout=10
    )
    assert refused.status_code == 409, refused.text
    assert v2 in refused.json()["detail"]
    time.sleep(3)  # longer than one long-poll round: any new manifest would have arrived
    assert name_in(hosts.spec("a")) == name_in(hosts.spec("b")) == "orders-v2"
    assert (status_of(tenant, v1)["status"], status_of(tenant, v2)["status"]) == (
        "active",
        "active",
    )
    assert status_of(tenant, v1)["superseded_by"] == v2
    for agent in hosts.running.values():
        if agent.process.poll() is not None:
            continue
        assert "Traceback" not in agent.output()


def test_a_stopped_agent_cannot_lock_the_environment(
    fleet: tuple[Server, Tenant, Hosts],
) -> None:
    _server, tenant, hosts = fleet
    agent = hosts.start("a")
    wait_for(lambda: online(tenant, "a"), what="agent a online")
    v1 = deploy(tenant, "orders").json()["id"]
    settle(tenant, v1, "active")

    # A stops; the control plane still counts it online (its last heartbeat is recent).
    agent.stop()
    assert online(tenant, "a")
    v2 = deploy(tenant, "silent").json()["id"]
    ended = settle(tenant, v2, "failed", "rolled_back", timeout=40)
    ended = settle(tenant, v2, "rolled_back", timeout=40)
    statuses = [e["to_status"] for e in ended["events"]]
    assert statuses[-3:] == ["failed", "rolling_back", "rolled_back"], statuses
    outcomes = [t["status"] for t in ended["targets"] if t["phase"] == "rollback"]
    assert outcomes == ["unreachable"]

    # The environment is free: a new deployment is accepted at once.
    created = deploy(tenant, "recovered")
    assert created.status_code == 201, created.text
    v3 = created.json()["id"]
    settle(tenant, v3, "deploying", "active")

    # A comes back and converges to v3, which becomes active.
    hosts.start("a")
    wait_for(lambda: name_in(hosts.spec("a")) == "recovered", what="agent a runs v3")
    final = settle(tenant, v3, "active", timeout=40)
    assert final["status"] == "active"
    assert tenant.api("GET", tenant.env_url)["current_deployment_id"] == v3
