from __future__ import annotations

import asyncio
import hashlib
import json
import time
from typing import Any

import pytest

from shared.roles import Role
from tests.conftest import Stack, Tree
from tests.controlplane.artifacts.kit import (
    incident_files,
    metadata,
    signing_agent,
    tar_gz,
    upload,
    wait_ingested,
)
from tests.controlplane.artifacts.test_uploads import promoted_spec
from tests.controlplane.pipelines.plans import LANE_GRAPH

pytestmark = pytest.mark.anyio


async def ingested_incident(stack: Stack, tree: Tree, spec_kv: str | None = None) -> str:
    spec = spec_kv or (await promoted_spec(stack, tree))["spec_kv"]
    agent = await signing_agent(stack, tree)
    content = tar_gz(incident_files(spec))
    receipt = (await upload(stack, agent, metadata(agent, content), content)).json()
    artifact = await wait_ingested(stack, tree, receipt["artifact_id"])
    assert artifact["status"] == "valid", artifact
    return str(artifact["id"])


async def finished(stack: Stack, tree: Tree, artifact_id: str, replay_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body: dict[str, Any] = await stack.ok(
            "GET", f"{tree.env_path}/artifacts/{artifact_id}/replays/{replay_id}", tree.owner
        )
        if body["status"] in ("completed", "failed"):
            return body
        stack.app.state.worker.notify()
        await asyncio.sleep(0.05)
    raise AssertionError("replay never finished")


async def replay(stack: Stack, tree: Tree, artifact_id: str, **body: Any) -> dict[str, Any]:
    response = await stack.call(
        "POST", f"{tree.env_path}/artifacts/{artifact_id}/replay", tree.owner, json=body
    )
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_dry_run_audit_is_complete_and_byte_identical(stack: Stack, tree: Tree) -> None:
    artifact_id = await ingested_incident(stack, tree)
    first = await finished(stack, tree, artifact_id, (await replay(stack, tree, artifact_id))["id"])
    second = await finished(
        stack, tree, artifact_id, (await replay(stack, tree, artifact_id))["id"]
    )
    assert first["status"] == "completed", first
    assert first["audit_sha256"] == second["audit_sha256"]
    assert first["audit"] == second["audit"]
    audit = first["audit"]
    assert audit["audit_v"] == 1
    assert set(audit) >= {"audit_v", "created_unix_ms", "spec_sha256", "input", "policy", "actions"}
    assert audit["input"]["scanned_records"] == 6
    assert len(audit["input"]["sample_sha256"]) == 5
    assert audit["policy"] == {
        "environment": tree.env_id,
        "approval_provided": False,
        "mode": "dry_run",
    }
    stages = [a["stage"] for a in audit["actions"][:3]]
    assert stages == ["decode", "enrich", "publish"]
    assert len(audit["actions"]) == 6 * 3
    assert all(a["decision"] == "would_process" for a in audit["actions"])
    assert {"action", "role", "input_lane", "output_lane", "stage", "target", "decision"} <= audit[
        "actions"
    ][0].keys()
    # the stored hash is the hash of the canonical bytes
    canonical = (
        json.dumps(audit, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        + b"\n"
    )
    assert first["audit_sha256"] == "sha256:" + hashlib.sha256(canonical).hexdigest()


async def test_last_n_and_lane_graph_routing(stack: Stack, tree: Tree) -> None:
    draft = await stack.ok(
        "POST", f"{tree.env_path}/drafts", tree.owner, json={"name": "lg", "plan": LANE_GRAPH}
    )
    version = await stack.ok("POST", f"{tree.env_path}/drafts/{draft['id']}/version", tree.owner)
    artifact_id = await ingested_incident(stack, tree, version["spec_kv"])
    done = await finished(
        stack, tree, artifact_id, (await replay(stack, tree, artifact_id, last_n=2))["id"]
    )
    audit = done["audit"]
    assert audit["input"]["last_n"] == 2
    assert audit["input"]["journal_lane"] == "out"
    assert [(a["role"], a["input_lane"], a["output_lane"]) for a in audit["actions"]] == [
        ("stage", "in", "out")
    ] * 2


async def test_execute_needs_an_approval_where_required(stack: Stack, tree: Tree) -> None:
    artifact_id = await ingested_incident(stack, tree)
    await stack.ok("PUT", tree.env_path, tree.owner, json={"approvals_required": 1})
    dry = await replay(stack, tree, artifact_id, mode="dry_run")
    assert dry["status"] == "queued"
    pending = await replay(stack, tree, artifact_id, mode="execute")
    assert pending["status"] == "pending_approval"
    path = f"{tree.env_path}/artifacts/{artifact_id}/replays/{pending['id']}/approve"
    assert (await stack.call("POST", path, tree.owner)).status_code == 403  # own request
    approver = await stack.member(tree, Role.APPROVER)
    assert (await stack.call("POST", path, approver)).status_code == 200
    assert (await stack.call("POST", path, approver)).status_code == 409
    done = await finished(stack, tree, artifact_id, pending["id"])
    assert done["audit"]["policy"]["approval_provided"] is True
    assert done["audit"]["policy"]["mode"] == "execute"
    assert done["audit"]["actions"][0]["decision"] == "processed"


async def test_replay_without_a_matching_version_is_404(stack: Stack, tree: Tree) -> None:
    version = await promoted_spec(stack, tree)
    other_spec = version["spec_kv"].replace("pipeline.name=orders", "pipeline.name=ghost")
    agent = await signing_agent(stack, tree)
    content = tar_gz(incident_files(other_spec))
    receipt = (await upload(stack, agent, metadata(agent, content), content)).json()
    await wait_ingested(stack, tree, receipt["artifact_id"])
    response = await stack.call(
        "POST", f"{tree.env_path}/artifacts/{receipt['artifact_id']}/replay", tree.owner, json={}
    )
    assert response.status_code == 404
    assert "spec hash" in response.json()["detail"]


async def test_replay_rules(stack: Stack, tree: Tree) -> None:
    artifact_id = await ingested_incident(stack, tree)
    viewer = await stack.member(tree, Role.VIEWER)
    url = f"{tree.env_path}/artifacts/{artifact_id}/replay"
    assert (await stack.call("POST", url, viewer, json={})).status_code == 403
    assert (await stack.call("POST", url, tree.owner, json={"mode": "explode"})).status_code == 400
    assert (await stack.call("POST", url, tree.owner, json={"last_n": 0})).status_code == 400
    agent = await signing_agent(stack, tree)
    telemetry = (await upload(stack, agent, metadata(agent, b"t", kind="telemetry"), b"t")).json()
    await wait_ingested(stack, tree, telemetry["artifact_id"])
    not_incident = await stack.call(
        "POST", f"{tree.env_path}/artifacts/{telemetry['artifact_id']}/replay", tree.owner, json={}
    )
    assert not_incident.status_code == 422
