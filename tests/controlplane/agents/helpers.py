"""Enrollment helpers shared by the agent tests."""

from __future__ import annotations

from typing import Any

from tests.conftest import Stack, Tree


async def enrollment_token(stack: Stack, tree: Tree, **body: Any) -> dict[str, Any]:
    created: dict[str, Any] = await stack.ok(
        "POST", f"{tree.env_path}/enrollment-tokens", tree.owner, json=body or None
    )
    return created


async def enroll(stack: Stack, tree: Tree, token: str, **body: Any) -> Any:
    return await stack.call(
        "POST",
        f"{tree.env_path}/agents",
        headers={"Authorization": f"Bearer {token}"},
        json=body,
    )


async def enrolled_agent(stack: Stack, tree: Tree, **body: Any) -> dict[str, Any]:
    token = await enrollment_token(stack, tree)
    response = await enroll(stack, tree, token["token"], **body)
    assert response.status_code == 201, response.text
    agent: dict[str, Any] = response.json()
    return agent


def agent_headers(agent: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {agent['api_key']}"}
