from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from sqlalchemy import select, update

from controlplane.db.models import AgentKeyRow, AgentRow
from controlplane.db.types import utcnow
from shared.agents import Heartbeat, Resources
from shared.roles import Role
from shared.signing import Envelope, decode_keyset
from tests.conftest import Stack, Tree
from tests.controlplane.agents.helpers import agent_headers, enrolled_agent

pytestmark = pytest.mark.anyio


def heartbeat(sequence: int, **extra: Any) -> dict[str, Any]:
    body = Heartbeat(
        sequence=sequence,
        agent_version="0.1.0",
        uptime_seconds=12.5,
        active_bundle_digest=None,
        resources=Resources(cpu_percent=12.5, memory_percent=40.0, load_1m=0.5, disk_percent=70.0),
    )
    return msgspec.to_builtins(body) | extra  # type: ignore[no-any-return]


async def test_heartbeat_is_buffered_then_flushed_in_a_batch(stack: Stack, tree: Tree) -> None:
    agent = await enrolled_agent(stack, tree, name="hb")
    path = f"/api/v1/agents/{agent['agent_id']}/heartbeat"
    response = await stack.call("POST", path, headers=agent_headers(agent), json=heartbeat(1))
    assert response.status_code == 200
    body = response.json()
    assert body["next_interval_seconds"] == stack.settings.agent_heartbeat_interval_seconds
    assert body["keyset_version"] == 1
    assert body["rotated_api_key"] is None

    # visible at once through the buffer, though not written yet
    listed = await stack.ok("GET", f"{tree.env_path}/agents", tree.owner)
    entry = next(a for a in listed["items"] if a["id"] == agent["agent_id"])
    assert entry["status"] == "online"
    assert entry["resources"]["cpu_percent"] == 12.5
    assert entry["agent_version"] == "0.1.0"

    async with stack.database.sessionmaker() as session:
        row = await session.get(AgentRow, agent["agent_id"])
        assert row is not None
        assert row.last_heartbeat_at is None

    buffer = stack.app.state.heartbeats
    flushes = buffer.flushes
    for sequence in range(2, 12):
        await stack.call("POST", path, headers=agent_headers(agent), json=heartbeat(sequence))
    await buffer.flush()
    assert buffer.flushes == flushes + 1
    async with stack.database.sessionmaker() as session:
        row = await session.get(AgentRow, agent["agent_id"])
        assert row is not None
        assert row.last_sequence == 11
        assert row.last_heartbeat_at is not None
        assert row.resources is not None
        assert row.resources["memory_percent"] == 40.0


async def test_out_of_order_heartbeat_does_not_win(stack: Stack, tree: Tree) -> None:
    agent = await enrolled_agent(stack, tree)
    path = f"/api/v1/agents/{agent['agent_id']}/heartbeat"
    await stack.call(
        "POST", path, headers=agent_headers(agent), json=heartbeat(5, agent_version="new")
    )
    await stack.call(
        "POST", path, headers=agent_headers(agent), json=heartbeat(4, agent_version="old")
    )
    await stack.app.state.heartbeats.flush()
    async with stack.database.sessionmaker() as session:
        row = await session.get(AgentRow, agent["agent_id"])
    assert row is not None
    assert (row.last_sequence, row.agent_version) == (5, "new")


async def test_own_record_and_signing_key(stack: Stack, tree: Tree) -> None:
    agent = await enrolled_agent(stack, tree, name="self")
    own = await stack.ok("GET", f"/api/v1/agents/{agent['agent_id']}", headers=agent_headers(agent))
    assert own["id"] == agent["agent_id"]
    assert own["name"] == "self"
    assert own["status"] == "offline"
    assert "agent:heartbeat" in own["scopes"]
    keys = await stack.ok(
        "GET", f"/api/v1/agents/{agent['agent_id']}/signing-key", headers=agent_headers(agent)
    )
    assert decode_keyset(msgspec.convert(keys, Envelope)).org_id == tree.org_id


async def test_key_of_another_agent_or_bad_key_is_401(stack: Stack, tree: Tree) -> None:
    mine, theirs = await enrolled_agent(stack, tree), await enrolled_agent(stack, tree)
    for path in ("", "/heartbeat", "/signing-key"):
        method = "POST" if path == "/heartbeat" else "GET"
        url = f"/api/v1/agents/{theirs['agent_id']}{path}"
        response = await stack.call(method, url, headers=agent_headers(mine), json=heartbeat(1))
        assert response.status_code == 401, (path, response.text)
        bearer = await stack.call(method, url, tree.owner, json=heartbeat(1))
        assert bearer.status_code == 401
        forged = {"Authorization": "Bearer byteor_agk_" + "A" * 43}
        assert (await stack.call(method, url, headers=forged, json=heartbeat(1))).status_code == 401


async def test_missing_scope_is_403(stack: Stack, tree: Tree) -> None:
    agent = await enrolled_agent(stack, tree)
    async with stack.database.sessionmaker() as session:
        from sqlalchemy import update

        from controlplane.db.models import AgentKeyRow

        await session.execute(
            update(AgentKeyRow)
            .where(AgentKeyRow.agent_id == agent["agent_id"])
            .values(scopes=["agent:signing_key"])
        )
        await session.commit()
    response = await stack.call(
        "POST",
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        headers=agent_headers(agent),
        json=heartbeat(1),
    )
    assert response.status_code == 403
    assert "agent:heartbeat" in response.json()["detail"]


async def test_deleted_agent_key_is_401(stack: Stack, tree: Tree) -> None:
    agent = await enrolled_agent(stack, tree)
    assert (
        await stack.call("DELETE", f"{tree.env_path}/agents/{agent['agent_id']}", tree.owner)
    ).status_code == 204
    response = await stack.call(
        "POST",
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        headers=agent_headers(agent),
        json=heartbeat(1),
    )
    assert response.status_code == 401


async def test_key_rotation_is_delivered_and_confirmed_by_use(stack: Stack, tree: Tree) -> None:
    agent = await enrolled_agent(stack, tree)
    hb = f"/api/v1/agents/{agent['agent_id']}/heartbeat"
    rotated = await stack.call(
        "POST", f"{tree.env_path}/agents/{agent['agent_id']}/rotate-key", tree.owner
    )
    assert rotated.status_code == 202
    response = await stack.ok("POST", hb, headers=agent_headers(agent), json=heartbeat(1))
    new_key = response["rotated_api_key"]
    assert new_key.startswith("byteor_agk_")
    assert new_key != agent["api_key"]
    # the old key keeps working until the new one is used
    again = await stack.ok("POST", hb, headers=agent_headers(agent), json=heartbeat(2))
    assert again["rotated_api_key"] == new_key
    confirmed = await stack.ok(
        "POST", hb, headers={"Authorization": f"Bearer {new_key}"}, json=heartbeat(3)
    )
    assert confirmed["rotated_api_key"] is None
    old = await stack.call("POST", hb, headers=agent_headers(agent), json=heartbeat(4))
    assert old.status_code == 401
    assert old.json()["detail"] == "The agent key has been revoked"
    forged = {"Authorization": "Bearer byteor_agk_" + "A" * 43}
    unknown = await stack.call("POST", hb, headers=forged, json=heartbeat(4))
    assert unknown.status_code == 401
    assert unknown.json()["detail"] == "The agent key is unknown"


async def agent_keys(stack: Stack, agent_id: str) -> list[AgentKeyRow]:
    async with stack.database.sessionmaker() as session:
        rows = await session.scalars(
            select(AgentKeyRow)
            .where(AgentKeyRow.agent_id == agent_id)
            .order_by(AgentKeyRow.created_at, AgentKeyRow.id)
        )
        return list(rows)


async def test_a_second_rotation_supersedes_the_undelivered_key_of_that_agent_only(
    stack: Stack, tree: Tree
) -> None:
    other, agent = await enrolled_agent(stack, tree), await enrolled_agent(stack, tree)
    hb = f"/api/v1/agents/{agent['agent_id']}/heartbeat"
    rotate = f"{tree.env_path}/agents/{agent['agent_id']}/rotate-key"
    # Confirm one rotation first, so the agent also has a revoked key, with the default scopes.
    assert (await stack.call("POST", rotate, tree.owner)).status_code == 202
    first = await stack.ok("POST", hb, headers=agent_headers(agent), json=heartbeat(1))
    agent = agent | {"api_key": first["rotated_api_key"]}
    await stack.ok("POST", hb, headers=agent_headers(agent), json=heartbeat(2))
    narrowed = ["agent:heartbeat", "agent:signing_key"]
    async with stack.database.sessionmaker() as session:
        await session.execute(
            update(AgentKeyRow)
            .where(AgentKeyRow.agent_id == agent["agent_id"], AgentKeyRow.state == "active")
            .values(scopes=narrowed)
        )
        await session.commit()
    other_rotate = f"{tree.env_path}/agents/{other['agent_id']}/rotate-key"
    assert (await stack.call("POST", other_rotate, tree.owner)).status_code == 202

    # The heartbeat read the agent's view before the rotations: they must replace it.
    assert (await stack.call("POST", rotate, tree.owner)).status_code == 202
    assert (await stack.call("POST", rotate, tree.owner)).status_code == 202
    response = await stack.ok("POST", hb, headers=agent_headers(agent), json=heartbeat(3))

    keys = await agent_keys(stack, agent["agent_id"])
    assert [key.state for key in keys] == ["revoked", "active", "superseded", "pending"]
    superseded, pending = keys[2], keys[3]
    assert superseded.revoked_at is not None
    assert superseded.sealed_secret is None
    assert pending.revoked_at is None
    assert pending.sealed_secret is not None
    # A rotated key has the scopes of the key it replaces.
    assert superseded.scopes == pending.scopes == narrowed
    assert response["rotated_api_key"] is not None
    assert response["rotated_api_key"].endswith(pending.hint.rsplit(".", 1)[-1])
    # The other agent's undelivered key is untouched and still handed over.
    assert [key.state for key in await agent_keys(stack, other["agent_id"])] == [
        "active",
        "pending",
    ]
    theirs = await stack.ok(
        "POST",
        f"/api/v1/agents/{other['agent_id']}/heartbeat",
        headers=agent_headers(other),
        json=heartbeat(1),
    )
    assert theirs["rotated_api_key"].startswith("byteor_agk_")


async def test_operator_agent_routes_check_roles(stack: Stack, tree: Tree) -> None:
    agent = await enrolled_agent(stack, tree)
    viewer = await stack.member(tree, Role.VIEWER)
    base = f"{tree.env_path}/agents/{agent['agent_id']}"
    assert (await stack.call("GET", base, viewer)).status_code == 200
    assert (await stack.call("DELETE", base, viewer)).status_code == 403
    assert (await stack.call("POST", f"{base}/rotate-key", viewer)).status_code == 403
    stranger = await stack.human()
    assert (await stack.call("GET", base, stranger)).status_code == 404


async def test_bad_heartbeat_body_is_400(stack: Stack, tree: Tree) -> None:
    agent = await enrolled_agent(stack, tree)
    path = f"/api/v1/agents/{agent['agent_id']}/heartbeat"
    for content in (b"{", b'{"sequence": "x"}', b"[]"):
        response = await stack.call(
            "POST",
            path,
            headers=agent_headers(agent) | {"content-type": "application/json"},
            content=content,
        )
        assert response.status_code == 400
    tolerant = await stack.call(
        "POST", path, headers=agent_headers(agent), json=heartbeat(1, future_field=True)
    )
    assert tolerant.status_code == 200


async def test_flush_on_shutdown(stack: Stack, tree: Tree) -> None:
    buffer = stack.app.state.heartbeats
    agent = await enrolled_agent(stack, tree)
    await stack.call(
        "POST",
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        headers=agent_headers(agent),
        json=heartbeat(9),
    )
    assert buffer.pending(agent["agent_id"]) is not None
    await asyncio.wait_for(buffer.flush(), timeout=5)
    assert buffer.pending(agent["agent_id"]) is None


async def test_app_shutdown_flushes_buffered_heartbeats(tmp_path: Any) -> None:
    from controlplane.app import create_app
    from controlplane.settings import Settings
    from tests.conftest import in_process_client

    settings = Settings(data_dir=tmp_path, heartbeat_flush_seconds=60)
    app = create_app(settings)
    async with app.lifespan(), in_process_client(app) as client:
        database = app.state.database
        stack = Stack(
            client=client, app=app, database=database, backend="sqlite", settings=settings
        )
        tree = await stack.tree()
        agent = await enrolled_agent(stack, tree)
        await stack.call(
            "POST",
            f"/api/v1/agents/{agent['agent_id']}/heartbeat",
            headers=agent_headers(agent),
            json=heartbeat(42),
        )
        async with database.sessionmaker() as session:
            row = await session.get(AgentRow, agent["agent_id"])
            assert row is not None
            assert row.last_sequence == 0  # still only in memory (flush interval is 60 s)
    from controlplane.db import create_database

    reopened = create_database(settings.resolved_database_url)
    try:
        async with reopened.sessionmaker() as session:
            row = await session.get(AgentRow, agent["agent_id"])
            assert row is not None
            assert row.last_sequence == 42
    finally:
        await reopened.dispose()


async def test_heartbeat_reports_the_spool(stack: Stack, tree: Tree) -> None:
    agent = await enrolled_agent(stack, tree)
    body = heartbeat(3) | {"spool": {"files": 4, "bytes": 4096, "dropped": {"telemetry": 2}}}
    await stack.ok(
        "POST",
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        headers=agent_headers(agent),
        json=body,
    )
    await stack.app.state.heartbeats.flush()
    record = await stack.ok("GET", f"{tree.env_path}/agents/{agent['agent_id']}", tree.owner)
    assert record["spool"] == {"files": 4, "bytes": 4096, "dropped": {"telemetry": 2}}


async def test_an_agent_stays_online_while_its_heartbeat_is_being_written(stack: Stack) -> None:
    """The flush swaps the buffer out before it commits: readers must still see the beat."""
    from contextlib import asynccontextmanager

    from controlplane.agents.heartbeats import HeartbeatBuffer
    from controlplane.db import Database

    tree = await stack.tree()
    agent = await enrolled_agent(stack, tree)
    seen_during_flush: list[bool] = []
    buffer: HeartbeatBuffer

    @asynccontextmanager
    async def observed_session() -> Any:
        seen_during_flush.append(buffer.pending(agent["agent_id"]) is not None)
        async with stack.database.sessionmaker() as session:
            yield session

    database = Database(
        engine=stack.database.engine,
        sessionmaker=observed_session,  # type: ignore[arg-type]
        readers=stack.database.readers,
    )
    buffer = HeartbeatBuffer(database, flush_seconds=60)
    buffer.record(agent["agent_id"], utcnow(), msgspec.convert(heartbeat(7), Heartbeat))
    assert await buffer.flush() == 1
    assert seen_during_flush == [True]
    assert buffer.pending(agent["agent_id"]) is None  # written: the database has it now
    async with stack.database.sessionmaker() as session:
        row = await session.get(AgentRow, agent["agent_id"])
        assert row is not None
        assert row.last_sequence == 7
