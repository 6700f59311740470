from __future__ import annotations

from typing import Any

import pytest

from controlplane.db.models import EnvironmentRow
from tests.conftest import Stack, Tree

pytestmark = pytest.mark.anyio

DEFAULTS = {
    "approvals_required": 0,
    "approver_role": "approver",
    "allow_self_approval": False,
    "approval_window_seconds": 86400,
    "max_inflight_deployments": 1,
    "rollback_policy": "manual",
    "tuning_profile": "default",
    "runtime_config": {},
}


async def test_created_with_documented_defaults(stack: Stack, tree: Tree) -> None:
    env = await stack.ok("GET", tree.env_path, tree.owner)
    assert {k: env[k] for k in DEFAULTS} == DEFAULTS
    assert env["org_id"] == tree.org_id
    assert env["project_id"] == tree.project_id
    assert env["id"].startswith("env_")


async def test_create_with_settings_and_partial_update(stack: Stack, tree: Tree) -> None:
    settings = {
        "approvals_required": 2,
        "approver_role": "admin",
        "allow_self_approval": True,
        "approval_window_seconds": 3600,
        "max_inflight_deployments": 3,
        "rollback_policy": "automatic",
        "tuning_profile": "isolated-core",
        "runtime_config": {"ring": {"size": 4096}},
    }
    env = await stack.ok(
        "POST",
        f"{tree.project_path}/environments",
        tree.owner,
        json={"name": "edge", **settings},
    )
    assert {k: env[k] for k in settings} == settings

    path = f"{tree.project_path}/environments/{env['id']}"
    updated = await stack.ok("PUT", path, tree.owner, json={"tuning_profile": "low-latency"})
    assert updated["tuning_profile"] == "low-latency"
    assert updated["approvals_required"] == 2
    assert updated["runtime_config"] == {"ring": {"size": 4096}}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "tuning_profile": "turbo"}, "tuning_profile"),
        ({"name": "x", "rollback_policy": "sometimes"}, "rollback_policy"),
        ({"name": "x", "approvals_required": -1}, "approvals_required"),
        ({"name": "x", "max_inflight_deployments": 0}, "max_inflight_deployments"),
        ({"name": "x", "approver_role": "king"}, "approver_role"),
        ({"name": "x", "runtime_config": [1, 2]}, "runtime_config"),
        ({"name": "x", "approval_window_seconds": "long"}, "approval_window_seconds"),
        ({"name": "x", "colour": "blue"}, "colour"),
        ({"name": "  padded  "}, "name"),
        ({"name": "a" * 129}, "name"),
        ({}, "name"),
    ],
)
async def test_bad_settings_are_400_naming_the_field(
    stack: Stack, tree: Tree, body: dict[str, Any], field: str
) -> None:
    before = await stack.count(EnvironmentRow, EnvironmentRow.project_id == tree.project_id)
    response = await stack.call("POST", f"{tree.project_path}/environments", tree.owner, json=body)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert problem["errors"][0]["field"] == field
    assert field in problem["detail"]
    after = await stack.count(EnvironmentRow, EnvironmentRow.project_id == tree.project_id)
    assert after == before


async def test_bad_update_changes_nothing(stack: Stack, tree: Tree) -> None:
    response = await stack.call("PUT", tree.env_path, tree.owner, json={"approvals_required": 99})
    assert response.status_code == 400
    env = await stack.ok("GET", tree.env_path, tree.owner)
    assert env["approvals_required"] == 0


async def test_duplicate_environment_name_is_409(stack: Stack, tree: Tree) -> None:
    response = await stack.call(
        "POST", f"{tree.project_path}/environments", tree.owner, json={"name": "production"}
    )
    assert response.status_code == 409


async def test_environment_through_wrong_project_is_404(stack: Stack, tree: Tree) -> None:
    other = await stack.ok("POST", f"{tree.org_path}/projects", tree.owner, json={"name": "p2"})
    wrong = f"{tree.org_path}/projects/{other['id']}/environments/{tree.env_id}"
    assert (await stack.call("GET", wrong, tree.owner)).status_code == 404
    assert (await stack.call("DELETE", wrong, tree.owner)).status_code == 404
    assert await stack.count(EnvironmentRow, EnvironmentRow.id == tree.env_id) == 1


async def test_delete_environment(stack: Stack, tree: Tree) -> None:
    assert (await stack.call("DELETE", tree.env_path, tree.owner)).status_code == 204
    assert await stack.count(EnvironmentRow, EnvironmentRow.id == tree.env_id) == 0
    assert (await stack.call("GET", tree.env_path, tree.owner)).status_code == 404
