"""Reports arriving together are applied together: one transaction, each failing alone."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import Stack
from tests.controlplane.delivery.world import make_world

pytestmark = pytest.mark.anyio

AGENTS = 24


async def test_concurrent_reports_share_transactions_and_a_bad_one_fails_alone(
    stack: Stack,
) -> None:
    world = await make_world(stack, agents=AGENTS)
    deployment = (await world.deploy()).json()
    await world.wait_status(deployment["id"], "deploying")
    manifests = [await world.manifest(agent) for agent in world.agents]
    batcher = stack.app.state.reports
    before = batcher.batches

    wrong = manifests[0]
    stale = type(wrong)(
        **{f: getattr(wrong, f) for f in wrong.__struct_fields__} | {"sequence": 999}
    )
    answers = await asyncio.gather(
        world.report(world.agents[0], stale, "activating"),
        *(
            world.report(agent, manifest, "active")
            for agent, manifest in zip(world.agents, manifests, strict=True)
        ),
    )
    refused, *accepted = answers
    assert refused.status_code == 404, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert [a.status_code for a in accepted] == [204] * AGENTS
    assert batcher.batches - before < AGENTS  # applied in fewer transactions than reports
    detail = await world.detail(deployment["id"])
    assert detail["status"] == "active"
    assert sorted(t["status"] for t in detail["targets"]) == ["active"] * AGENTS
