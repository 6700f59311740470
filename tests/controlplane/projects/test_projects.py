from __future__ import annotations

import pytest

from controlplane.db.models import EnvironmentRow, ProjectRow
from shared.ids import is_valid_id
from tests.conftest import Stack, Tree

pytestmark = pytest.mark.anyio


async def test_project_crud(stack: Stack, tree: Tree) -> None:
    base = f"{tree.org_path}/projects"
    created = await stack.ok(
        "POST",
        base,
        tree.owner,
        json={"name": "Risk", "description": "risk engine", "runtime_config": {"x": {"y": 1}}},
    )
    assert is_valid_id(created["id"], "prj")
    assert created["org_id"] == tree.org_id
    assert created["description"] == "risk engine"

    got = await stack.ok("GET", f"{base}/{created['id']}", tree.owner)
    assert got == created

    updated = await stack.ok("PUT", f"{base}/{created['id']}", tree.owner, json={"name": "Risk2"})
    assert updated["name"] == "Risk2"
    assert updated["description"] == "risk engine"

    listed = await stack.ok("GET", base, tree.owner)
    assert [p["id"] for p in listed["items"]] == [tree.project_id, created["id"]]

    assert (await stack.call("DELETE", f"{base}/{created['id']}", tree.owner)).status_code == 204
    assert (await stack.call("GET", f"{base}/{created['id']}", tree.owner)).status_code == 404
    assert (await stack.call("DELETE", f"{base}/{created['id']}", tree.owner)).status_code == 404


async def test_duplicate_name_is_409(stack: Stack, tree: Tree) -> None:
    base = f"{tree.org_path}/projects"
    response = await stack.call("POST", base, tree.owner, json={"name": "payments"})
    assert response.status_code == 409
    assert "payments" in response.json()["detail"]
    other = await stack.ok("POST", base, tree.owner, json={"name": "other"})
    rename = await stack.call("PUT", f"{base}/{other['id']}", tree.owner, json={"name": "payments"})
    assert rename.status_code == 409
    assert await stack.count(ProjectRow, ProjectRow.org_id == tree.org_id) == 2


async def test_same_name_in_another_org_is_fine(stack: Stack, tree: Tree) -> None:
    other = await stack.tree()
    assert other.project_id != tree.project_id  # both are called "payments"


async def test_project_through_wrong_org_is_404(stack: Stack, tree: Tree) -> None:
    other = await stack.tree(owner=tree.owner)  # same owner, second org
    wrong = f"{other.org_path}/projects/{tree.project_id}"
    for method in ("GET", "PUT", "DELETE"):
        body = {"name": "x"} if method == "PUT" else None
        assert (await stack.call(method, wrong, tree.owner, json=body)).status_code == 404
    assert await stack.count(ProjectRow, ProjectRow.id == tree.project_id) == 1


async def test_delete_project_cascades_to_environments(stack: Stack, tree: Tree) -> None:
    for name in ("staging", "canary"):
        await stack.ok("POST", f"{tree.project_path}/environments", tree.owner, json={"name": name})
    in_project = EnvironmentRow.project_id == tree.project_id
    assert await stack.count(EnvironmentRow, in_project) == 3
    sibling = await stack.ok(
        "POST", f"{tree.org_path}/projects", tree.owner, json={"name": "sibling"}
    )
    await stack.ok(
        "POST",
        f"{tree.org_path}/projects/{sibling['id']}/environments",
        tree.owner,
        json={"name": "prod"},
    )

    assert (await stack.call("DELETE", tree.project_path, tree.owner)).status_code == 204

    assert await stack.count(ProjectRow, ProjectRow.id == tree.project_id) == 0
    assert await stack.count(EnvironmentRow, in_project) == 0
    assert await stack.count(EnvironmentRow, EnvironmentRow.project_id == sibling["id"]) == 1
