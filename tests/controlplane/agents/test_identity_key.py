"""``PUT /api/v1/agents/{agent_id}/identity-key``: agents on pre-provisioned credentials register
the key that signs their artifact uploads, once."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from controlplane.db.models import AgentRow
from tests.conftest import Stack, Tree
from tests.controlplane.agents.helpers import (
    agent_headers,
    enroll,
    enrolled_agent,
    enrollment_token,
)
from tests.controlplane.artifacts.kit import SigningAgent, metadata, upload

pytestmark = pytest.mark.anyio


def public_key(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def stored_key(stack: Stack, agent_id: str) -> str | None:
    async with stack.database.sessionmaker() as session:
        row = await session.get(AgentRow, agent_id)
        assert row is not None
        return row.public_key


async def test_a_provisioned_agent_registers_its_key_once_then_uploads(
    stack: Stack, tree: Tree
) -> None:
    agent = await enrolled_agent(stack, tree, name="baked")  # enrolled without a key
    path = f"/api/v1/agents/{agent['agent_id']}/identity-key"
    key = Ed25519PrivateKey.generate()
    signer = SigningAgent(agent_id=agent["agent_id"], api_key=agent["api_key"], key=key)
    content = b"telemetry bytes"
    refused = await upload(stack, signer, metadata(signer, content, kind="telemetry"), content)
    assert refused.status_code == 400
    assert "identity-key" in refused.json()["detail"]

    first = await stack.call(
        "PUT", path, headers=agent_headers(agent), json={"public_key": public_key(key)}
    )
    assert first.status_code == 200, first.text
    assert first.json() == {"public_key": public_key(key)}
    again = await stack.call(
        "PUT", path, headers=agent_headers(agent), json={"public_key": public_key(key)}
    )
    assert again.status_code == 200
    record = await stack.ok(
        "GET", f"/api/v1/agents/{agent['agent_id']}", headers=agent_headers(agent)
    )
    assert record["public_key"] == public_key(key)

    accepted = await upload(stack, signer, metadata(signer, content, kind="telemetry"), content)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["artifact_id"].startswith("art_")

    other = Ed25519PrivateKey.generate()
    conflict = await stack.call(
        "PUT", path, headers=agent_headers(agent), json={"public_key": public_key(other)}
    )
    assert conflict.status_code == 409
    assert "enroll" in conflict.json()["detail"]
    assert await stored_key(stack, agent["agent_id"]) == public_key(key)


async def test_an_enrolled_agent_keeps_the_key_it_enrolled_with(stack: Stack, tree: Tree) -> None:
    key = Ed25519PrivateKey.generate()
    token = await enrollment_token(stack, tree)
    body = (await enroll(stack, tree, token["token"], public_key=public_key(key))).json()
    path = f"/api/v1/agents/{body['agent_id']}/identity-key"
    same = await stack.call(
        "PUT", path, headers=agent_headers(body), json={"public_key": public_key(key)}
    )
    assert same.status_code == 200
    swap = await stack.call(
        "PUT",
        path,
        headers=agent_headers(body),
        json={"public_key": public_key(Ed25519PrivateKey.generate())},
    )
    assert swap.status_code == 409
    assert await stored_key(stack, body["agent_id"]) == public_key(key)


@pytest.mark.parametrize(
    "value",
    ["", "A" * 42 + "B", "A" * 42 + "!", "A" * 44, "A" * 43 + "=", "not base64 at all", "A" * 128],
)
async def test_malformed_keys_are_400_and_store_nothing(
    stack: Stack, tree: Tree, value: str
) -> None:
    agent = await enrolled_agent(stack, tree)
    response = await stack.call(
        "PUT",
        f"/api/v1/agents/{agent['agent_id']}/identity-key",
        headers=agent_headers(agent),
        json={"public_key": value},
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert await stored_key(stack, agent["agent_id"]) is None
    token = await enrollment_token(stack, tree)
    enrolling = await enroll(stack, tree, token["token"], public_key=value)
    assert enrolling.status_code == 400, enrolling.text
    # the refused enrollment did not spend the token
    assert (await enroll(stack, tree, token["token"])).status_code == 201


async def test_only_the_agent_itself_may_register(stack: Stack, tree: Tree) -> None:
    agent = await enrolled_agent(stack, tree)
    other = await enrolled_agent(stack, tree)
    path = f"/api/v1/agents/{agent['agent_id']}/identity-key"
    body = {"public_key": public_key(Ed25519PrivateKey.generate())}
    assert (
        await stack.call("PUT", path, headers=agent_headers(other), json=body)
    ).status_code == 401
    assert (await stack.call("PUT", path, tree.owner, json=body)).status_code == 401
    assert (await stack.call("PUT", path, json=body)).status_code == 401
    assert await stored_key(stack, agent["agent_id"]) is None
