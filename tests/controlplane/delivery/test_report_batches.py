"""Reports arriving together are applied together: one transaction, each failing alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import event

from controlplane.delivery.rollout import record_reports
from shared.deployments import DeploymentReport, ReportStatus
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


async def test_a_batch_of_reports_costs_a_few_statements_whatever_its_size(stack: Stack) -> None:
    world = await make_world(stack, agents=AGENTS)
    deployment = (await world.deploy()).json()
    await world.wait_status(deployment["id"], "deploying")
    manifests = [await world.manifest(agent) for agent in world.agents]
    ids = [agent["agent_id"] for agent in world.agents]

    def report(i: int, status: ReportStatus, **extra: Any) -> tuple[str, DeploymentReport]:
        m = manifests[i]
        fields: dict[str, Any] = {"sequence": m.sequence} | extra
        return ids[i], DeploymentReport(m.deployment_id, status=status, **fields)

    batch = [report(i, "activating") for i in range(AGENTS)]
    batch += [report(i, "active") for i in range(AGENTS - 2)]  # the same manifests, moved on
    batch += [
        report(AGENTS - 2, "failed", reason="boom"),
        report(AGENTS - 2, "active"),  # already failed in this batch: refused
        report(AGENTS - 1, "active", sequence=manifests[-1].sequence + 50),  # no such manifest
        (ids[0], DeploymentReport("dep_missing", sequence=1, status="active")),
    ]
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement.split()[0].upper())

    engine = stack.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        async with stack.database.sessionmaker() as session:
            outcomes = await record_reports(session, batch)
            await session.flush()
            written = list(statements)
            await session.commit()
    finally:
        event.remove(engine, "before_cursor_execute", count)

    # Two reads and the updates of one flush, for 50 reports (one by one: about five each).
    assert written.count("SELECT") == 2, written
    assert len(written) <= 6, written
    kinds = [type(o).__name__ for o in outcomes]
    assert kinds[: 2 * AGENTS - 2] == ["NoneType"] * AGENTS + ["DeploymentRow"] * (AGENTS - 2)
    assert kinds[-4:] == ["DeploymentRow", "Conflict", "NotFound", "NotFound"]
    detail = await world.detail(deployment["id"])
    statuses = {t["agent_id"]: t["status"] for t in detail["targets"]}
    assert [statuses[i] for i in ids] == ["active"] * (AGENTS - 2) + ["failed", "activating"]
