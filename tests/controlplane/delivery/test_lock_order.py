"""Paths that lock several agents lock them in one order, by id, across batches too.

On PostgreSQL, a heartbeat batch locking its agents in arrival order while a rollout in another
process locked them by id deadlocked: the rollout failed five attempts in a row and the
deployment never left ``building`` (10,000 agents, ``serve --workers 2``).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

import pytest
from sqlalchemy import event

from controlplane.db.models import ConfigBundleRow, DeploymentRow
from controlplane.delivery import rollout
from controlplane.delivery.rollout import Delivery, issue_manifests
from controlplane.delivery.states import TargetPhase
from tests.controlplane.delivery.world import make_world

if TYPE_CHECKING:
    from tests.conftest import Stack

pytestmark = pytest.mark.anyio

_AGENT_ID = re.compile(r"^agt_")


def _agent_ids(value: object) -> list[str]:
    """The agent ids in one bound value: an id, or a list of them (``one_of``: an array on
    PostgreSQL, a JSON array on SQLite)."""
    if isinstance(value, str) and value.startswith("["):
        value = json.loads(value)
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, str) and _AGENT_ID.match(v)]


class _AgentParameters:
    """Agent ids in the parameters of each statement matching ``pattern``, in order."""

    def __init__(self, stack: Stack, pattern: str) -> None:
        self.pattern = re.compile(pattern, re.IGNORECASE | re.DOTALL)
        self.ids: list[list[str]] = []
        self.engines = {
            stack.app.state.database.engine.sync_engine,
            stack.app.state.database.reader_engine.sync_engine,
        }

    def _record(self, *args: Any) -> None:
        statement, parameters, _context, executemany = args[2:]
        if not self.pattern.search(statement):
            return
        rows = parameters if executemany else [parameters]
        found: list[str] = []
        for row in rows:
            for value in row.values() if isinstance(row, dict) else row:
                found.extend(_agent_ids(value))
        self.ids.append(found)

    def __enter__(self) -> _AgentParameters:
        for engine in self.engines:
            event.listen(engine, "before_cursor_execute", self._record)
        return self

    def __exit__(self, *_: object) -> None:
        for engine in self.engines:
            event.remove(engine, "before_cursor_execute", self._record)


def _flat(groups: list[list[str]]) -> list[str]:
    return [agent_id for group in groups for agent_id in group]


async def test_a_heartbeat_batch_writes_its_agents_in_id_order(stack: Stack) -> None:
    world = await make_world(stack, agents=4)
    await stack.app.state.heartbeats.flush()
    newest_first = sorted(world.agents, key=lambda a: a["agent_id"], reverse=True)
    for agent in newest_first:  # arrival order is the reverse of id order
        await world.heartbeat(agent)
    with _AgentParameters(stack, r"^\s*UPDATE agents\b") as written:
        assert await stack.app.state.heartbeats.flush() == 4
    ids = _flat(written.ids)
    assert sorted(ids) == sorted(a["agent_id"] for a in world.agents)
    assert ids == sorted(ids)


async def test_a_rollout_locks_its_agents_in_id_order_across_batches(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = await make_world(stack, agents=5)
    created = (await world.deploy()).json()
    await world.wait_status(created["id"], "deploying")
    monkeypatch.setattr(rollout, "_ISSUE_BATCH", 2)  # three batches for five agents
    shuffled = [a["agent_id"] for a in world.agents]
    shuffled = shuffled[2:] + shuffled[:2]  # not in id order, across the batch boundaries
    assert shuffled != sorted(shuffled)
    async with stack.database.sessionmaker() as session:
        deployment = await session.get(DeploymentRow, created["id"])
        assert deployment is not None
        bundle = await session.get(ConfigBundleRow, deployment.config_bundle_id)
        assert bundle is not None
        with _AgentParameters(
            stack, r"^\s*SELECT agents\.id\b.*FROM agents\s+WHERE agents\.id (?:IN|= ANY)"
        ) as read:
            issued = await issue_manifests(
                session,
                Delivery.of_app(stack.app.state),
                deployment,
                shuffled,
                bundle,
                TargetPhase.DEPLOY,
            )
        await session.rollback()
    assert set(issued) == set(shuffled)
    assert len(read.ids) == 3
    assert _flat(read.ids) == sorted(shuffled)
