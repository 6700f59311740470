from __future__ import annotations

import copy
from typing import Any

import pytest

from controlplane.db.models import JobRow, PipelineDraftRow, PipelineVersionRow
from tests.conftest import Stack, Tree
from tests.controlplane.pipelines.plans import INVALID, LANE_GRAPH, SINGLE_RING

pytestmark = pytest.mark.anyio


async def new_draft(stack: Stack, tree: Tree, plan: dict[str, Any] = SINGLE_RING) -> dict[str, Any]:
    body: dict[str, Any] = await stack.ok(
        "POST",
        f"{tree.env_path}/drafts",
        tree.owner,
        json={"name": stack.unique("d"), "plan": plan},
    )
    return body


async def rows(stack: Stack) -> tuple[int, int, int]:
    return (
        await stack.count(PipelineDraftRow),
        await stack.count(PipelineVersionRow),
        await stack.count(JobRow),
    )


async def test_draft_create_get_list(stack: Stack, tree: Tree) -> None:
    response = await stack.call(
        "POST", f"{tree.env_path}/drafts", tree.owner, json={"name": "orders", "plan": SINGLE_RING}
    )
    assert response.status_code == 201
    draft = response.json()
    assert draft["id"].startswith("drf_")
    assert draft["revision"] == 1
    assert draft["environment_id"] == tree.env_id
    assert response.headers["etag"] == '"1"'

    got = await stack.call("GET", f"{tree.env_path}/drafts/{draft['id']}", tree.owner)
    assert got.json() == draft
    listed = await stack.ok("GET", f"{tree.env_path}/drafts", tree.owner)
    assert [d["id"] for d in listed["items"]] == [draft["id"]]

    again = await stack.call(
        "POST", f"{tree.env_path}/drafts", tree.owner, json={"name": "orders", "plan": SINGLE_RING}
    )
    assert again.status_code == 409


async def test_update_bumps_revision_and_honours_if_match(stack: Stack, tree: Tree) -> None:
    draft = await new_draft(stack, tree)
    path = f"{tree.env_path}/drafts/{draft['id']}"
    changed = copy.deepcopy(SINGLE_RING)
    changed["name"] = "orders-v2"

    updated = await stack.call(
        "PUT", path, tree.owner, json={"plan": changed}, headers={"If-Match": '"1"'}
    )
    assert updated.status_code == 200
    assert updated.json()["revision"] == 2
    assert updated.headers["etag"] == '"2"'

    stale = await stack.call(
        "PUT", path, tree.owner, json={"plan": SINGLE_RING}, headers={"If-Match": '"1"'}
    )
    assert stale.status_code == 412
    assert stale.headers["content-type"] == "application/problem+json"
    current = await stack.ok("GET", path, tree.owner)
    assert current["plan"]["name"] == "orders-v2"
    assert current["revision"] == 2

    blind = await stack.call("PUT", path, tree.owner, json={"name": "renamed"})
    assert blind.json()["revision"] == 3


async def test_preview_valid_plan_persists_nothing(stack: Stack, tree: Tree) -> None:
    draft = await new_draft(stack, tree, LANE_GRAPH)
    before = await rows(stack)
    response = await stack.call("POST", f"{tree.env_path}/drafts/{draft['id']}/preview", tree.owner)
    assert response.status_code == 200
    preview = response.json()
    assert preview["ok"] is True
    assert preview["spec_kv"].startswith("")
    assert "pipeline.name=fanout" in preview["spec_kv"]
    assert preview["spec_hash"].startswith("sha256:")
    assert preview["revision"] == 1
    assert await rows(stack) == before


async def test_preview_invalid_plan_is_200_with_all_diagnostics(stack: Stack, tree: Tree) -> None:
    draft = await new_draft(stack, tree, INVALID)
    before = await rows(stack)
    preview = await stack.ok("POST", f"{tree.env_path}/drafts/{draft['id']}/preview", tree.owner)
    assert preview["ok"] is False
    assert preview["spec_kv"] is None
    assert preview["spec_hash"] is None
    codes = {d["code"] for d in preview["diagnostics"]}
    assert len(codes) >= 2  # too many stages AND the producer
    assert all({"code", "path", "message", "severity"} <= d.keys() for d in preview["diagnostics"])
    assert await rows(stack) == before


async def test_preview_candidate_plan_without_saving(stack: Stack, tree: Tree) -> None:
    draft = await new_draft(stack, tree, INVALID)
    path = f"{tree.env_path}/drafts/{draft['id']}"
    preview = await stack.ok("POST", f"{path}/preview", tree.owner, json={"plan": SINGLE_RING})
    assert preview["ok"] is True
    assert (await stack.ok("GET", path, tree.owner))["plan"] == INVALID


@pytest.mark.parametrize("content", [b"{", b'{"plan": 5}', b'{"plna": {}}'])
async def test_preview_malformed_body_is_400(stack: Stack, tree: Tree, content: bytes) -> None:
    draft = await new_draft(stack, tree)
    response = await stack.call(
        "POST",
        f"{tree.env_path}/drafts/{draft['id']}/preview",
        tree.owner,
        content=content,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400


async def test_promote_creates_numbered_immutable_versions(stack: Stack, tree: Tree) -> None:
    draft = await new_draft(stack, tree)
    path = f"{tree.env_path}/drafts/{draft['id']}"
    first = await stack.call("POST", f"{path}/version", tree.owner)
    assert first.status_code == 201
    v1 = first.json()
    assert v1["id"].startswith("ver_")
    assert v1["number"] == 1
    assert v1["plan"] == SINGLE_RING
    assert v1["created_by"] == tree.owner.user_id
    preview = await stack.ok("POST", f"{path}/preview", tree.owner)
    assert (v1["spec_kv"], v1["spec_hash"]) == (preview["spec_kv"], preview["spec_hash"])

    await stack.ok("PUT", path, tree.owner, json={"plan": LANE_GRAPH})
    v2 = await stack.ok("POST", f"{path}/version", tree.owner)
    assert v2["number"] == 2
    assert v2["draft_revision"] == 2
    assert v2["spec_hash"] != v1["spec_hash"]

    versions = await stack.ok("GET", f"{tree.env_path}/versions", tree.owner)
    assert [v["id"] for v in versions["items"]] == [v1["id"], v2["id"]]
    version_path = f"{tree.env_path}/versions/{v1['id']}"
    assert (await stack.ok("GET", version_path, tree.owner)) == v1
    for method in ("PUT", "DELETE", "PATCH"):
        assert (await stack.call(method, version_path, tree.owner, json={})).status_code == 405


async def test_promote_invalid_plan_is_422_with_diagnostics(stack: Stack, tree: Tree) -> None:
    draft = await new_draft(stack, tree, INVALID)
    before = await rows(stack)
    response = await stack.call("POST", f"{tree.env_path}/drafts/{draft['id']}/version", tree.owner)
    assert response.status_code == 422
    problem = response.json()
    assert response.headers["content-type"] == "application/problem+json"
    assert problem["diagnostics"]
    assert {"code", "path", "message"} <= problem["diagnostics"][0].keys()
    assert await rows(stack) == before


async def test_promote_with_stale_if_match_is_412(stack: Stack, tree: Tree) -> None:
    draft = await new_draft(stack, tree)
    path = f"{tree.env_path}/drafts/{draft['id']}"
    await stack.ok("PUT", path, tree.owner, json={"name": "changed"})
    stale = await stack.call("POST", f"{path}/version", tree.owner, headers={"If-Match": '"1"'})
    assert stale.status_code == 412
    fresh = await stack.call("POST", f"{path}/version", tree.owner, headers={"If-Match": '"2"'})
    assert fresh.status_code == 201


async def test_drafts_are_scoped_to_their_environment(stack: Stack, tree: Tree) -> None:
    draft = await new_draft(stack, tree)
    other_env = await stack.ok(
        "POST", f"{tree.project_path}/environments", tree.owner, json={"name": "staging"}
    )
    wrong = f"{tree.project_path}/environments/{other_env['id']}/drafts/{draft['id']}"
    assert (await stack.call("GET", wrong, tree.owner)).status_code == 404
    assert (await stack.call("POST", f"{wrong}/version", tree.owner)).status_code == 404
    stranger = await stack.human()
    path = f"{tree.env_path}/drafts/{draft['id']}"
    assert (await stack.call("GET", path, stranger)).status_code == 404


async def test_draft_plan_must_be_an_object(stack: Stack, tree: Tree) -> None:
    response = await stack.call(
        "POST", f"{tree.env_path}/drafts", tree.owner, json={"name": "x", "plan": [1, 2]}
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "plan"


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


HOSTILE = {
    "five_stages": {**SINGLE_RING, "stages": [{"id": f"s{i}"} for i in range(5)]},
    "ten_thousand_stages": {**SINGLE_RING, "stages": [{"id": f"s{i}"} for i in range(10_000)]},
    "cycle": {
        **SINGLE_RING,
        "stages": [{"id": "a", "depends_on": [1]}, {"id": "b", "depends_on": [0]}],
    },
    "mpmc": {**SINGLE_RING, "single_ring": {"producer": "mpmc", "scheduling": "dedicated"}},
    "strict_two_shards": {**SINGLE_RING, "constraints": {"shards": 2, "ordering": "strict"}},
    "per_key_no_key": {**SINGLE_RING, "constraints": {"shards": 2, "ordering": "per_key"}},
    "unknown_lane_kind": {
        **LANE_GRAPH,
        "lanes": [{"name": "in", "kind": "Pipe", "on_full": "Block"}],
    },
    "unresolved_lane": {
        **LANE_GRAPH,
        "roles": [{"name": "p", "kind": "stage", "inputs": ["nowhere"], "outputs": ["out"]}],
    },
    "deep_value": {**SINGLE_RING, "name": _nested(200)},
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_plans_get_diagnostics_not_errors(
    stack: Stack, tree: Tree, case: str
) -> None:
    draft = await new_draft(stack, tree, HOSTILE[case])
    preview = await stack.ok("POST", f"{tree.env_path}/drafts/{draft['id']}/preview", tree.owner)
    assert preview["ok"] is False
    assert preview["diagnostics"]
    assert len(preview["diagnostics"]) <= 100
    promoted = await stack.call("POST", f"{tree.env_path}/drafts/{draft['id']}/version", tree.owner)
    assert promoted.status_code == 422


async def test_non_utf8_and_absurdly_deep_bodies_are_400(stack: Stack, tree: Tree) -> None:
    for content in (
        b'{"name": "x", "plan": {"name": "\xff\xfe"}}',
        b'{"name": "x", "plan": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_000 + b"}",
    ):
        response = await stack.call(
            "POST",
            f"{tree.env_path}/drafts",
            tree.owner,
            content=content,
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 400, response.text
