from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from sqlalchemy import select, update

from controlplane.auth.secrets import digest_token
from controlplane.db.models import AgentKeyRow, AgentRow, EnrollmentTokenRow
from shared.roles import Role
from shared.signing import Envelope, decode_keyset
from tests.conftest import Stack, Tree
from tests.controlplane.agents.helpers import enroll, enrolled_agent, enrollment_token

pytestmark = pytest.mark.anyio


async def test_token_created_once_listed_without_secret(stack: Stack, tree: Tree) -> None:
    created = await enrollment_token(stack, tree, max_uses=3, expires_in=600)
    assert created["token"].startswith("byteor_enr_")
    assert created["max_uses"] == 3
    expires = datetime.fromisoformat(created["expires_at"])
    assert timedelta(seconds=590) < expires - datetime.now(UTC) <= timedelta(seconds=600)
    listed = await stack.ok("GET", f"{tree.env_path}/enrollment-tokens", tree.owner)
    assert [t["id"] for t in listed] == [created["id"]]
    assert "token" not in listed[0]
    assert listed[0]["uses"] == 0
    async with stack.database.sessionmaker() as session:
        row = await session.get(EnrollmentTokenRow, created["id"])
    assert row is not None
    assert row.token_hash == digest_token(created["token"])


async def test_defaults_single_use_one_day(stack: Stack, tree: Tree) -> None:
    created = await enrollment_token(stack, tree)
    assert created["max_uses"] == 1
    expires = datetime.fromisoformat(created["expires_at"])
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(days=1)


async def test_enroll_returns_key_scopes_and_pinned_keyset(stack: Stack, tree: Tree) -> None:
    token = await enrollment_token(stack, tree)
    response = await enroll(
        stack, tree, token["token"], name="edge-node-01", hostname="edge01.example"
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["agent_id"].startswith("agt_")
    assert body["api_key"].startswith("byteor_agk_")
    assert body["name"] == "edge-node-01"
    assert body["environment_id"] == tree.env_id
    assert set(body["scopes"]) == {
        "agent:heartbeat",
        "agent:deployment",
        "agent:signing_key",
        "agent:artifact_upload",
    }
    keyset = decode_keyset(msgspec.convert(body["signing_keys"], Envelope))
    assert keyset.org_id == tree.org_id
    async with stack.database.sessionmaker() as session:
        key = await session.scalar(
            select(AgentKeyRow).where(AgentKeyRow.agent_id == body["agent_id"])
        )
    assert key is not None
    assert key.key_hash == digest_token(body["api_key"])

    second = await enroll(stack, tree, token["token"], name="again")
    assert second.status_code == 401
    assert "used up" in second.json()["detail"]
    assert second.headers["www-authenticate"].startswith("Bearer")


async def test_names_derived_from_hostname_are_unique(stack: Stack, tree: Tree) -> None:
    token = await enrollment_token(stack, tree, max_uses=4)
    names = []
    for _ in range(3):
        response = await enroll(stack, tree, token["token"], hostname="Web-1.prod.example.com")
        names.append(response.json()["name"])
    assert names == ["web-1", "web-1-2", "web-1-3"]
    anonymous = await enroll(stack, tree, token["token"])
    assert anonymous.json()["name"] == "agent"


async def test_explicit_duplicate_name_is_409_and_keeps_the_use(stack: Stack, tree: Tree) -> None:
    await enrolled_agent(stack, tree, name="dup")
    token = await enrollment_token(stack, tree)
    response = await enroll(stack, tree, token["token"], name="dup")
    assert response.status_code == 409
    listed = await stack.ok("GET", f"{tree.env_path}/enrollment-tokens", tree.owner)
    assert {t["id"]: t["uses"] for t in listed}[token["id"]] == 0


@pytest.mark.parametrize(
    "case", ["expired", "revoked", "other_env", "bearer", "agent_key", "garbage"]
)
async def test_bad_enrollment_credentials_are_401(stack: Stack, tree: Tree, case: str) -> None:
    token = (await enrollment_token(stack, tree))["token"]
    path_tree = tree
    if case == "expired":
        async with stack.database.sessionmaker() as session:
            await session.execute(
                update(EnrollmentTokenRow)
                .where(EnrollmentTokenRow.token_hash == digest_token(token))
                .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
            )
            await session.commit()
    elif case == "revoked":
        listed = await stack.ok("GET", f"{tree.env_path}/enrollment-tokens", tree.owner)
        await stack.ok("DELETE", f"{tree.env_path}/enrollment-tokens/{listed[0]['id']}", tree.owner)
    elif case == "other_env":
        other = await stack.ok(
            "POST", f"{tree.project_path}/environments", tree.owner, json={"name": "staging"}
        )
        path_tree = Tree(tree.owner, tree.org_id, tree.project_id, other["id"])
    elif case == "bearer":
        token = tree.owner.token
    elif case == "agent_key":
        token = (await enrolled_agent(stack, tree))["api_key"]
    else:
        token = "byteor_enr_" + "x" * 43
    before = await stack.count(AgentRow)
    response = await enroll(stack, path_tree, token, name=stack.unique("n"))
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert await stack.count(AgentRow) == before


async def test_concurrent_enrollments_consume_exactly_one_use(stack: Stack, tree: Tree) -> None:
    token = (await enrollment_token(stack, tree))["token"]
    responses = await asyncio.gather(
        *(enroll(stack, tree, token, hostname=f"host-{i}") for i in range(20))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] + [401] * 19
    assert await stack.count(AgentRow, AgentRow.env_id == tree.env_id) == 1


@pytest.mark.parametrize(("max_uses", "hosts"), [(20, 20), (5, 20)])
async def test_a_fleet_enrolling_at_once_with_one_token_spends_exactly_its_uses(
    stack: Stack, tree: Tree, max_uses: int, hosts: int
) -> None:
    """A provisioning script hands one token to a whole fleet, and the organization's first
    key set is made by the first of them: every use is spent once, none beyond the limit, and
    concurrent enrollments never deadlock (a 500) on the token's or the organization's row."""
    created = await enrollment_token(stack, tree, max_uses=max_uses)
    responses = await asyncio.gather(
        *(enroll(stack, tree, created["token"], hostname=f"host-{i}") for i in range(hosts))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [201] * max_uses + [401] * (hosts - max_uses), [
        r.text for r in responses if r.status_code not in (201, 401)
    ]
    refused = [r.json()["detail"] for r in responses if r.status_code == 401]
    assert set(refused) <= {"The enrollment token has been used up"}
    assert await stack.count(AgentRow, AgentRow.env_id == tree.env_id) == max_uses
    listed = await stack.ok("GET", f"{tree.env_path}/enrollment-tokens", tree.owner)
    (token,) = [t for t in listed if t["id"] == created["id"]]
    assert token["uses"] == max_uses
    keysets = {
        decode_keyset(msgspec.convert(r.json()["signing_keys"], Envelope)).version
        for r in responses
        if r.status_code == 201
    }
    assert keysets == {1}  # one first key set, pinned by every agent


async def test_token_management_needs_admin(stack: Stack, tree: Tree) -> None:
    deployer = await stack.member(tree, Role.DEPLOYER)
    path = f"{tree.env_path}/enrollment-tokens"
    assert (await stack.call("POST", path, deployer, json={})).status_code == 403
    assert (await stack.call("GET", path, deployer)).status_code == 403
    stranger = await stack.human()
    assert (await stack.call("POST", path, stranger, json={})).status_code == 404


@pytest.mark.parametrize("body", [{"max_uses": 0}, {"expires_in": 5}, {"uses": 3}])
async def test_bad_token_requests_are_400(stack: Stack, tree: Tree, body: dict[str, int]) -> None:
    response = await stack.call("POST", f"{tree.env_path}/enrollment-tokens", tree.owner, json=body)
    assert response.status_code == 400
