from __future__ import annotations

import pytest

from shared.ids import is_valid_id
from tests.conftest import Stack, Tree

pytestmark = pytest.mark.anyio


async def test_create_org_makes_caller_owner(stack: Stack) -> None:
    person = await stack.human()
    org = await stack.ok(
        "POST", "/api/v1/orgs", person, json={"name": "Acme", "runtime_config": {"a": 1}}
    )
    assert is_valid_id(org["id"], "org")
    assert org["name"] == "Acme"
    assert org["runtime_config"] == {"a": 1}
    assert org["created_at"].endswith("Z")
    assert org["updated_at"] == org["created_at"]

    me = await stack.ok("GET", "/api/v1/me", person)
    assert {"org_id": org["id"], "org_name": "Acme", "role": "owner"} in me["memberships"]


async def test_list_shows_only_callers_orgs(stack: Stack) -> None:
    alice, bob = await stack.human(), await stack.human()
    mine = [
        (await stack.ok("POST", "/api/v1/orgs", alice, json={"name": f"a{i}"}))["id"]
        for i in range(3)
    ]
    await stack.ok("POST", "/api/v1/orgs", bob, json={"name": "bob's"})

    listed = await stack.ok("GET", "/api/v1/orgs", alice)
    assert [o["id"] for o in listed["items"]] == mine
    assert listed["next_cursor"] is None


async def test_list_paginates_with_cursor(stack: Stack) -> None:
    person = await stack.human()
    created = [
        (await stack.ok("POST", "/api/v1/orgs", person, json={"name": f"o{i}"}))["id"]
        for i in range(5)
    ]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await stack.ok("GET", "/api/v1/orgs", person, params=params)
        pages += 1
        seen += [o["id"] for o in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == created
    assert pages == 3


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 100000}, {"limit": "x"}, {"cursor": "!!!"}, {"cursor": "Zm9v"}],
)
async def test_bad_paging_is_400(stack: Stack, params: dict[str, object]) -> None:
    person = await stack.human()
    response = await stack.call("GET", "/api/v1/orgs", person, params=params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"


async def test_update_org_is_partial(stack: Stack, tree: Tree) -> None:
    before = await stack.ok("GET", tree.org_path, tree.owner)
    after = await stack.ok(
        "PUT", tree.org_path, tree.owner, json={"runtime_config": {"threads": 4}}
    )
    assert after["name"] == before["name"]
    assert after["runtime_config"] == {"threads": 4}
    assert after["updated_at"] >= before["updated_at"]


async def test_other_org_is_404_not_403(stack: Stack, tree: Tree) -> None:
    stranger = await stack.human()
    response = await stack.call("GET", tree.org_path, stranger)
    assert response.status_code == 404
    assert tree.org_id in response.json()["detail"]


async def test_service_account_cannot_create_org(stack: Stack, tree: Tree) -> None:
    from shared.roles import Role

    robot = await stack.member(tree, Role.OWNER)
    response = await stack.call("POST", "/api/v1/orgs", robot, json={"name": "x"})
    assert response.status_code == 403
