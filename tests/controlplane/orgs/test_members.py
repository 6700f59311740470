from __future__ import annotations

import pytest

from shared.roles import Role
from tests.conftest import Stack, Tree

pytestmark = pytest.mark.anyio


async def test_invite_lists_and_updates_member(stack: Stack, tree: Tree) -> None:
    email = f"{stack.unique('dev')}@example.com"
    member = await stack.ok(
        "POST", f"{tree.org_path}/members", tree.owner, json={"email": email, "role": "deployer"}
    )
    assert member["role"] == "deployer"
    assert member["kind"] == "human"
    assert member["email"] == email

    listed = await stack.ok("GET", f"{tree.org_path}/members", tree.owner)
    assert {m["user_id"]: m["role"] for m in listed["items"]} == {
        tree.owner.user_id: "owner",
        member["user_id"]: "deployer",
    }

    updated = await stack.ok(
        "PUT", f"{tree.org_path}/members/{member['user_id']}", tree.owner, json={"role": "approver"}
    )
    assert updated["role"] == "approver"


async def test_invite_twice_is_409(stack: Stack, tree: Tree) -> None:
    body = {"email": f"{stack.unique('x')}@example.com"}
    await stack.ok("POST", f"{tree.org_path}/members", tree.owner, json=body)
    response = await stack.call("POST", f"{tree.org_path}/members", tree.owner, json=body)
    assert response.status_code == 409


async def test_invite_bad_email_is_400(stack: Stack, tree: Tree) -> None:
    response = await stack.call(
        "POST", f"{tree.org_path}/members", tree.owner, json={"email": "not-an-email"}
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "email"


async def test_last_owner_cannot_leave_or_be_demoted(stack: Stack, tree: Tree) -> None:
    path = f"{tree.org_path}/members/{tree.owner.user_id}"
    assert (await stack.call("PUT", path, tree.owner, json={"role": "admin"})).status_code == 409
    assert (await stack.call("DELETE", path, tree.owner)).status_code == 409
    assert await stack.org_exists(tree.org_id)


async def test_second_owner_allows_first_to_step_down(stack: Stack, tree: Tree) -> None:
    other = await stack.human()
    me = await stack.ok("GET", "/api/v1/me", other)
    await stack.ok(
        "POST",
        f"{tree.org_path}/members",
        tree.owner,
        json={"email": me["email"], "role": "owner"},
    )
    await stack.ok(
        "PUT", f"{tree.org_path}/members/{tree.owner.user_id}", other, json={"role": "viewer"}
    )
    response = await stack.call("GET", f"{tree.org_path}/service-accounts", tree.owner)
    assert response.status_code == 403


async def test_admin_cannot_touch_owners_or_grant_owner(stack: Stack, tree: Tree) -> None:
    admin = await stack.member(tree, Role.ADMIN)
    owner_path = f"{tree.org_path}/members/{tree.owner.user_id}"
    assert (await stack.call("PUT", owner_path, admin, json={"role": "viewer"})).status_code == 403
    assert (await stack.call("DELETE", owner_path, admin)).status_code == 403
    grant = await stack.call(
        "POST",
        f"{tree.org_path}/service-accounts",
        admin,
        json={"name": "root", "role": "owner"},
    )
    assert grant.status_code == 403
    invite = await stack.call(
        "POST",
        f"{tree.org_path}/members",
        admin,
        json={"email": "boss@example.com", "role": "owner"},
    )
    assert invite.status_code == 403


async def test_unknown_member_is_404(stack: Stack, tree: Tree) -> None:
    response = await stack.call(
        "PUT", f"{tree.org_path}/members/usr_nothere", tree.owner, json={"role": "viewer"}
    )
    assert response.status_code == 404


async def test_service_account_lifecycle(stack: Stack, tree: Tree) -> None:
    created = await stack.ok(
        "POST",
        f"{tree.org_path}/service-accounts",
        tree.owner,
        json={"name": "provisioner", "role": "deployer"},
    )
    assert created["token"].startswith("byteor_pat_")
    assert created["role"] == "deployer"
    robot = {"Authorization": f"Bearer {created['token']}"}

    me = await stack.ok("GET", "/api/v1/me", headers=robot)
    assert me["kind"] == "service"
    assert me["memberships"] == [
        {"org_id": tree.org_id, "org_name": me["memberships"][0]["org_name"], "role": "deployer"}
    ]

    sa_path = f"{tree.org_path}/service-accounts/{created['id']}"
    second = await stack.ok("POST", f"{sa_path}/tokens", tree.owner, json={"name": "second"})
    tokens = await stack.ok("GET", f"{sa_path}/tokens", tree.owner)
    assert {t["id"] for t in tokens} == {created["token_id"], second["id"]}
    assert all("token" not in t for t in tokens)

    await stack.ok("DELETE", f"{sa_path}/tokens/{created['token_id']}", tree.owner)
    assert (await stack.call("GET", "/api/v1/me", headers=robot)).status_code == 401
    second_headers = {"Authorization": f"Bearer {second['token']}"}
    assert (await stack.call("GET", "/api/v1/me", headers=second_headers)).status_code == 200

    listed = await stack.ok("GET", f"{tree.org_path}/service-accounts", tree.owner)
    assert created["id"] in [a["id"] for a in listed["items"]]

    await stack.ok("DELETE", sa_path, tree.owner)
    assert (await stack.call("GET", "/api/v1/me", headers=second_headers)).status_code == 401
    assert (await stack.call("GET", f"{sa_path}/tokens", tree.owner)).status_code == 404


async def test_service_account_of_other_org_is_404(stack: Stack, tree: Tree) -> None:
    other = await stack.tree()
    robot = await stack.ok(
        "POST", f"{other.org_path}/service-accounts", other.owner, json={"name": "x"}
    )
    # tree's owner addresses the other org's account through their own org
    response = await stack.call(
        "GET", f"{tree.org_path}/service-accounts/{robot['id']}/tokens", tree.owner
    )
    assert response.status_code == 404
