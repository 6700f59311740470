"""Hot paths: agent routes take no write lock, open at most one session, and cache agent keys.

Each test holds SQLite's write lock (or counts sessions) while the real app serves the route, so
a route that took the lock, or read a key from the database on every beat, fails here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select, text, update
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout
from sqlalchemy.orm import Session

from controlplane.agents.keycache import AgentKeyCache, _Entry
from controlplane.app import create_app
from controlplane.auth.principal import AgentPrincipal
from controlplane.auth.secrets import digest_token
from controlplane.db import ReadOnlyTransaction, begin_write, create_database
from controlplane.db.models import AgentKeyRow
from controlplane.settings import Settings
from tests.conftest import GENEROUS_RATE_LIMITS, Stack, Tree, in_process_client
from tests.controlplane.agents.helpers import agent_headers, enrolled_agent
from tests.controlplane.agents.test_runtime import heartbeat

pytestmark = pytest.mark.anyio


@contextlib.asynccontextmanager
async def sqlite_stack(tmp_path: Path, **overrides: Any) -> AsyncIterator[Stack]:
    settings = Settings(
        data_dir=tmp_path, heartbeat_flush_seconds=60, **{**GENEROUS_RATE_LIMITS, **overrides}
    )
    app = create_app(settings)
    async with app.lifespan(), in_process_client(app) as client:
        yield Stack(
            client=client,
            app=app,
            database=app.state.database,
            backend="sqlite",
            settings=settings,
        )


@contextlib.asynccontextmanager
async def write_lock_held(stack: Stack) -> AsyncIterator[None]:
    """Hold SQLite's write lock (an open write transaction) for the duration of the block."""
    async with stack.database.sessionmaker() as session:
        await session.execute(text("UPDATE agents SET name = name WHERE 1 = 0"))
        yield
        await session.rollback()


@contextlib.contextmanager
def sessions_begun() -> Iterator[set[int]]:
    """Every ORM session a request began a transaction in meanwhile (by identity).

    The app's own background tasks (``byteor-*``: the job worker a request may wake, the
    heartbeat flush, the key-cache sweep) run on their own sessions and are not counted.
    """
    begun: set[int] = set()
    kept: list[Session] = []  # alive until the block ends, so no id is reused by a later one

    def after_begin(session: Session, *_: Any) -> None:
        task = asyncio.current_task()
        if task is None or not task.get_name().startswith("byteor-"):
            begun.add(id(session))
            kept.append(session)

    event.listen(Session, "after_begin", after_begin)
    try:
        yield begun
    finally:
        event.remove(Session, "after_begin", after_begin)


async def beat(stack: Stack, agent: dict[str, Any], sequence: int) -> Any:
    return await stack.call(
        "POST",
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        headers=agent_headers(agent),
        json=heartbeat(sequence),
    )


async def revoke_keys_directly(stack: Stack, agent_id: str) -> None:
    """Revoke the agent's keys as another process would: a write this process's change feed
    never hears of."""
    async with stack.database.sessionmaker() as session:
        await session.execute(
            update(AgentKeyRow).where(AgentKeyRow.agent_id == agent_id).values(state="revoked")
        )
        await session.commit()


async def test_agent_routes_answer_while_another_writer_holds_the_lock(tmp_path: Path) -> None:
    # Under the old "BEGIN IMMEDIATE for every transaction", each of these waited for the writer.
    async with sqlite_stack(tmp_path, agent_key_cache_seconds=0) as stack:
        tree = await stack.tree()
        agent = await enrolled_agent(stack, tree)
        async with write_lock_held(stack):
            answered = await asyncio.wait_for(beat(stack, agent, 1), timeout=5)
            record = await asyncio.wait_for(
                stack.call(
                    "GET", f"/api/v1/agents/{agent['agent_id']}", headers=agent_headers(agent)
                ),
                timeout=5,
            )
            listed = await asyncio.wait_for(
                stack.call("GET", f"{tree.env_path}/agents", tree.owner), timeout=5
            )
        assert answered.status_code == 200, answered.text
        assert record.status_code == 200, record.text
        assert listed.status_code == 200, listed.text


async def test_a_heartbeat_opens_no_session_once_key_and_view_are_warm(tmp_path: Path) -> None:
    async with sqlite_stack(tmp_path, fleet_view_ttl_seconds=10) as stack:
        tree = await stack.tree()
        agent = await enrolled_agent(stack, tree)
        with sessions_begun() as cold:
            assert (await beat(stack, agent, 1)).status_code == 200
        assert cold, "the first beat reads the key and the view"
        with sessions_begun() as warm:
            for sequence in range(2, 12):
                assert (await beat(stack, agent, sequence)).status_code == 200
        assert warm == set()
        assert stack.app.state.agent_keys.hits >= 10


async def test_a_bearer_request_uses_one_session_for_authentication_and_handler(
    stack: Stack, tree: Tree
) -> None:
    with sessions_begun() as begun:
        await stack.ok("GET", f"{tree.env_path}/agents", tree.owner)
        await stack.ok("POST", f"{tree.project_path}/environments", tree.owner, json={"name": "qa"})
    assert len(begun) == 2  # one per request


async def test_a_key_revoked_by_another_process_stops_working_within_the_bound(
    tmp_path: Path,
) -> None:
    async with sqlite_stack(tmp_path, agent_key_cache_seconds=1) as stack:
        tree = await stack.tree()
        agent = await enrolled_agent(stack, tree)
        assert (await beat(stack, agent, 1)).status_code == 200
        # Another process revokes the key: a write this process's change feed never hears of.
        await revoke_keys_directly(stack, agent["agent_id"])
        assert (await beat(stack, agent, 2)).status_code == 200  # still served from the cache
        await asyncio.sleep(1.2)
        refused = await beat(stack, agent, 3)
        assert refused.status_code == 401, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")


async def test_the_background_sweep_drops_revoked_keys(tmp_path: Path) -> None:
    async with sqlite_stack(tmp_path, agent_key_cache_seconds=5) as stack:
        tree = await stack.tree()
        agent = await enrolled_agent(stack, tree)
        assert (await beat(stack, agent, 1)).status_code == 200
        cache = stack.app.state.agent_keys
        assert len(cache) == 1
        assert await cache.revalidate() == 0  # still active: kept
        await revoke_keys_directly(stack, agent["agent_id"])
        assert await cache.revalidate() == 1
        assert (await beat(stack, agent, 2)).status_code == 401


@contextlib.asynccontextmanager
async def every_reader_taken(stack: Stack) -> AsyncIterator[None]:
    """Check out every connection of the readers' pool for the duration of the block."""
    pool = stack.database.reader_engine.pool
    sessions = [stack.database.readers() for _ in range(pool.size())]  # type: ignore[attr-defined]
    for session in sessions:
        await session.connection()
    try:
        yield
    finally:
        for session in sessions:
            await session.close()


async def test_the_sweep_runs_while_requests_hold_every_pooled_reader(tmp_path: Path) -> None:
    # A sweep that queued for a pooled reader behind a burst of requests timed out, and every
    # cached key expired at once: the burst then read every key from the database.
    async with sqlite_stack(
        tmp_path,
        agent_key_cache_seconds=5,
        database_pool_size=1,
        database_pool_overflow=0,
        database_pool_timeout_seconds=0.5,
    ) as stack:
        tree = await stack.tree()
        agent = await enrolled_agent(stack, tree)
        assert (await beat(stack, agent, 1)).status_code == 200
        cache = stack.app.state.agent_keys
        async with every_reader_taken(stack):
            assert await asyncio.wait_for(cache.revalidate(), timeout=5) == 0
            await revoke_keys_directly(stack, agent["agent_id"])
            assert await asyncio.wait_for(cache.revalidate(), timeout=5) == 1
        assert len(cache) == 0


async def test_a_key_read_that_waited_for_the_pool_is_cached_fresh(tmp_path: Path) -> None:
    # Stamped before the wait, a read that waited longer than the cache's lifetime was cached
    # already expired: under load every request then read its key again, and the pool never
    # drained.
    async with sqlite_stack(
        tmp_path,
        agent_key_cache_seconds=1,
        database_pool_size=1,
        database_pool_overflow=0,
        database_pool_timeout_seconds=10,
    ) as stack:
        tree = await stack.tree()
        agent = await enrolled_agent(stack, tree)
        cache = stack.app.state.agent_keys
        async with every_reader_taken(stack):
            waiting = asyncio.ensure_future(beat(stack, agent, 1))
            await asyncio.sleep(1.3)
            assert not waiting.done()
        assert (await waiting).status_code == 200
        assert cache.get(digest_token(agent["api_key"])) is not None


async def test_reads_run_on_the_event_loop_thread(tmp_path: Path) -> None:
    # A thread per reader connection made each statement a round trip through the loop.
    async with sqlite_stack(tmp_path) as stack:
        before = threading.active_count()
        sessions = [stack.database.readers() for _ in range(4)]
        try:
            counts = [await s.scalar(text("SELECT count(*) FROM agents")) for s in sessions]
            assert threading.active_count() == before
        finally:
            for session in sessions:
                await session.close()
        assert counts == [0, 0, 0, 0]


async def test_deleting_an_agent_cuts_off_its_cached_key_at_once(stack: Stack, tree: Tree) -> None:
    agent = await enrolled_agent(stack, tree)
    assert (await beat(stack, agent, 1)).status_code == 200
    assert (await beat(stack, agent, 2)).status_code == 200  # cached now
    await stack.ok("DELETE", f"{tree.env_path}/agents/{agent['agent_id']}", tree.owner)
    assert (await beat(stack, agent, 3)).status_code == 401


async def test_deleting_the_environment_cuts_off_cached_keys_at_once(
    stack: Stack, tree: Tree
) -> None:
    agent = await enrolled_agent(stack, tree)
    assert (await beat(stack, agent, 1)).status_code == 200
    await stack.ok("DELETE", tree.env_path, tree.owner)
    assert (await beat(stack, agent, 2)).status_code == 401


async def test_a_write_in_a_read_transaction_is_refused(stack: Stack) -> None:
    async with stack.database.readers() as session:
        assert (await session.execute(text("SELECT 1"))).scalar() == 1
        with pytest.raises(ReadOnlyTransaction):
            await session.execute(text("UPDATE agents SET name = name WHERE 1 = 0"))
        await session.rollback()
        await begin_write(session)
        await session.execute(text("UPDATE agents SET name = name WHERE 1 = 0"))
        await session.commit()


async def test_a_reader_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    async with sqlite_stack(tmp_path) as stack, write_lock_held(stack):
        async with stack.database.readers() as session:
            count = await asyncio.wait_for(
                session.scalar(text("SELECT count(*) FROM agents")), timeout=5
            )
        assert count == 0


async def test_a_burst_larger_than_the_pool_never_waits_on_itself(tmp_path: Path) -> None:
    """Cold caches and more concurrent agents than pooled connections: nothing deadlocks.

    Each request reads its credential and then waits for the environment's shared view, which
    needs a connection of its own; a request that kept its connection meanwhile would starve the
    pool (5 + 10 connections) until the pool timeout.
    """
    async with sqlite_stack(tmp_path, agent_key_cache_seconds=0, fleet_view_ttl_seconds=0) as stack:
        tree = await stack.tree()
        agents = [await enrolled_agent(stack, tree) for _ in range(40)]

        async def both(agent: dict[str, Any]) -> tuple[int, int]:
            answered = await beat(stack, agent, 1)
            record = await stack.call(
                "GET", f"/api/v1/agents/{agent['agent_id']}", headers=agent_headers(agent)
            )
            return answered.status_code, record.status_code

        results = await asyncio.wait_for(asyncio.gather(*(both(a) for a in agents)), timeout=20)
        assert set(results) == {(200, 200)}


async def test_one_unwritable_heartbeat_does_not_hold_back_the_batch(
    stack: Stack, tree: Tree
) -> None:
    from controlplane.agents.heartbeats import HeartbeatBuffer
    from controlplane.db.models import AgentRow
    from controlplane.db.types import utcnow
    from shared.agents import Heartbeat

    good = await enrolled_agent(stack, tree)
    bad = await enrolled_agent(stack, tree)
    buffer = HeartbeatBuffer(stack.database, flush_seconds=60)
    buffer.record(good["agent_id"], utcnow(), Heartbeat(sequence=5, agent_version="ok"))
    # Built directly, past the API's bounds: no database integer column holds it.
    buffer.record(bad["agent_id"], utcnow(), Heartbeat(sequence=2**70, agent_version="bad"))
    assert await buffer.flush() == 2
    async with stack.database.sessionmaker() as session:
        written = await session.get(AgentRow, good["agent_id"])
        dropped = await session.get(AgentRow, bad["agent_id"])
        assert written is not None
        assert dropped is not None
        assert (written.last_sequence, written.agent_version) == (5, "ok")
        assert dropped.last_sequence == 0
    assert buffer.pending(good["agent_id"]) is None


async def test_finding_an_unwritable_heartbeat_costs_few_statements(
    stack: Stack, tree: Tree
) -> None:
    # Written one by one, a fleet's batch with one bad entry held the one writer connection for
    # a statement per agent (10,000 at fleet scale), and deployments could not start meanwhile.
    from controlplane.agents.heartbeats import HeartbeatBuffer
    from controlplane.db.models import AgentRow
    from controlplane.db.types import utcnow
    from shared.agents import Heartbeat

    agents = [await enrolled_agent(stack, tree) for _ in range(32)]
    buffer = HeartbeatBuffer(stack.database, flush_seconds=60)
    for agent in agents[:-1]:
        buffer.record(agent["agent_id"], utcnow(), Heartbeat(sequence=7, agent_version="ok"))
    bad = agents[-1]["agent_id"]
    buffer.record(bad, utcnow(), Heartbeat(sequence=2**70, agent_version="bad"))
    updates: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE AGENTS"):
            updates.append(statement)

    engine = stack.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert await buffer.flush() == 32
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(updates) <= 1 + 2 * 5  # the batch, then two halves per level of 32 → 1
    async with stack.database.readers() as session:
        written = dict((await session.execute(select(AgentRow.id, AgentRow.last_sequence))).all())
    assert {written[a["agent_id"]] for a in agents[:-1]} == {7}
    assert written[bad] == 0


async def test_a_batch_that_finds_no_writer_connection_is_kept_whole(tmp_path: Path) -> None:
    # The pool's timeout is about the database, not the data: splitting the batch then cost a
    # statement per half while the writer stayed busy, and dropped good heartbeats.
    from controlplane.agents.heartbeats import HeartbeatBuffer
    from controlplane.db.types import utcnow
    from shared.agents import Heartbeat

    async with sqlite_stack(tmp_path, database_pool_timeout_seconds=0.3) as stack:
        tree = await stack.tree()
        agent = await enrolled_agent(stack, tree)
        buffer = HeartbeatBuffer(stack.database, flush_seconds=60)
        buffer.record(agent["agent_id"], utcnow(), Heartbeat(sequence=3, agent_version="ok"))
        async with write_lock_held(stack):
            with pytest.raises(SQLAlchemyTimeout):
                await buffer.flush()
        pending = buffer.pending(agent["agent_id"])
        assert pending is not None
        assert pending.heartbeat.sequence == 3
        assert await buffer.flush() == 1
        record = await stack.call(
            "GET", f"/api/v1/agents/{agent['agent_id']}", headers=agent_headers(agent)
        )
        assert record.json()["agent_version"] == "ok", record.text


AGENT_HOT_ROUTES = [
    ("POST", "/api/v1/agents/{agent_id:str}/heartbeat", {"request", "agent_id", "data"}),
    (
        "GET",
        "/api/v1/agents/{agent_id:str}/deployment",
        {"request", "agent_id", "wait", "if_none_match"},
    ),
    ("POST", "/api/v1/agents/{agent_id:str}/deployment", {"request", "agent_id", "data"}),
    ("GET", "/api/v1/agents/{agent_id:str}", {"request", "agent_id"}),
    ("GET", "/api/v1/agents/{agent_id:str}/signing-key", {"request", "agent_id"}),
]


@pytest.mark.parametrize(("method", "path", "expected"), AGENT_HOT_ROUTES)
def test_agent_hot_routes_have_nothing_for_litestar_to_resolve(
    tmp_path: Path, method: str, path: str, expected: set[str]
) -> None:
    """Two or more dependencies are resolved in an anyio task group, and a ``State`` parameter
    is copied per request: on a heartbeat each costs more than the rest of the request."""
    app = create_app(Settings(data_dir=tmp_path, **GENEROUS_RATE_LIMITS))
    handlers = [
        handler
        for route in app.routes
        if route.path == path
        for handler in getattr(route, "route_handlers", [])
        if method in handler.http_methods
    ]
    assert len(handlers) == 1
    (handler,) = handlers
    parameters = set(handler.parsed_fn_signature.parameters)
    assert parameters == expected
    assert not set(handler.resolve_dependencies()) & parameters
    # The request parameter is annotated with a plain class, so Litestar's per-request
    # ``isinstance`` check does not raise and catch a TypeError on a subscripted generic.
    assert isinstance(handler.parsed_fn_signature.parameters["request"].annotation, type)


class _SlowSweeps(AgentKeyCache):
    """A key cache whose sweeps take ``seconds`` and note when each one began."""

    def __init__(self, seconds: float, max_age: float) -> None:
        super().__init__(create_database("sqlite+aiosqlite://"), max_age, 10)
        self.seconds = seconds
        self.began: list[float] = []
        self.fifth = asyncio.Event()
        self._entries["digest"] = _Entry(_PRINCIPAL, time.monotonic())  # something to sweep

    async def revalidate(self) -> int:
        self.began.append(asyncio.get_running_loop().time())
        if len(self.began) == 5:
            self.fifth.set()
        await asyncio.sleep(self.seconds)
        return 0


_PRINCIPAL = AgentPrincipal(
    agent_id="agt_x", key_id="agk_x", org_id="org_x", env_id="env_x", scopes=frozenset()
)


async def test_sweeps_keep_their_cadence_when_a_sweep_runs_long() -> None:
    """A sweep is due an interval after the last one was due, not after it ended: a slow sweep
    (a loaded loop) must not push the next one past the entries' lifetime."""
    cache = _SlowSweeps(seconds=0.3, max_age=0.6)  # one sweep every 0.2 s, each taking 0.3 s
    runner = asyncio.create_task(cache.run())
    await asyncio.wait_for(cache.fifth.wait(), timeout=10)
    await cache.shutdown()
    await asyncio.wait_for(runner, timeout=2)
    gaps = [b - a for a, b in itertools.pairwise(cache.began)]
    # Back to back (0.3 s each), where waiting a full interval after each one ends is 0.5 s.
    assert statistics.mean(gaps) < 0.4, gaps


async def test_shutdown_wakes_the_sweeper_at_once() -> None:
    cache = _SlowSweeps(seconds=0, max_age=5)  # the first sweep is 1.7 s away
    runner = asyncio.create_task(cache.run())
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await cache.shutdown()
    await asyncio.wait_for(runner, timeout=1)
    assert time.monotonic() - started < 0.5
    assert cache.began == []


def _age_every_entry(cache: AgentKeyCache, seconds: float) -> None:
    """Make every entry ``seconds`` older, as a sweep that came too late leaves them."""
    for entry in cache._entries.values():
        entry.validated_at -= seconds


async def _agents_with_expired_keys(stack: Stack, count: int) -> list[dict[str, Any]]:
    """``count`` agents whose keys were cached by a heartbeat, every entry now expired."""
    tree = await stack.tree()
    agents = [await enrolled_agent(stack, tree) for _ in range(count)]
    for agent in agents:
        assert (await beat(stack, agent, 1)).status_code == 200
    _age_every_entry(stack.app.state.agent_keys, 10)
    return agents


@contextlib.contextmanager
def key_reads() -> Iterator[list[str]]:
    """The statements that read agent keys meanwhile: one per key, or a batched sweep's count
    of the keys still active ("sweep") and, when one is missing, its read of which ("which")."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM agent_keys" in statement:
            if "agent_keys.id IN" not in statement:
                seen.append("key")
            else:
                seen.append("sweep" if "count(" in statement else "which")

    event.listen(Engine, "before_cursor_execute", before)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", before)


async def test_a_late_sweep_is_run_by_the_first_request_that_finds_an_expired_key(
    tmp_path: Path,
) -> None:
    """Under load the sweep's timer runs late and every entry expires at once; the fleet must
    not then read its keys one request at a time (that load is what made the timer late)."""
    async with sqlite_stack(tmp_path, agent_key_cache_seconds=5) as stack:
        agents = await _agents_with_expired_keys(stack, 3)
        cache = stack.app.state.agent_keys
        await revoke_keys_directly(stack, agents[2]["agent_id"])  # meanwhile, elsewhere
        with key_reads() as reads:
            for agent in agents[:2]:
                assert (await beat(stack, agent, 2)).status_code == 200
        # One batched sweep made both fresh again: its count found a key missing, so it read
        # which keys are left.
        assert reads == ["sweep", "which"]
        assert cache.refreshes == 1
        refused = await beat(stack, agents[2], 2)  # the sweep dropped the revoked key
        assert refused.status_code == 401, refused.text


async def test_requests_that_find_expired_keys_during_a_refresh_wait_for_it(
    tmp_path: Path,
) -> None:
    async with sqlite_stack(tmp_path, agent_key_cache_seconds=5) as stack:
        agents = await _agents_with_expired_keys(stack, 4)
        cache = stack.app.state.agent_keys
        with key_reads() as reads:
            answers = await asyncio.gather(*(beat(stack, agent, 2) for agent in agents))
        assert [answer.status_code for answer in answers] == [200] * 4
        assert reads == ["sweep"]  # every key still active: the count alone said so
        assert cache.refreshes == 1


async def test_a_sweep_renews_the_valid_entries_it_read_and_leaves_replaced_ones(
    tmp_path: Path,
) -> None:
    """A sweep makes valid entries fresh from the moment its read began, drops revoked ones,
    counts what it dropped, and never touches an entry put anew while it read."""
    async with sqlite_stack(tmp_path, agent_key_cache_seconds=5) as stack:
        agents = await _agents_with_expired_keys(stack, 3)
        cache: AgentKeyCache = stack.app.state.agent_keys
        await revoke_keys_directly(stack, agents[0]["agent_id"])
        await revoke_keys_directly(stack, agents[1]["agent_id"])
        digests = [digest_token(agent["api_key"]) for agent in agents]
        assert all(cache.expired(digest) for digest in digests)
        replaced = _Entry(cache._entries[digests[1]].principal, time.monotonic())
        before = time.monotonic()
        sweep = asyncio.ensure_future(cache.revalidate())
        await asyncio.sleep(0)  # the sweep took its snapshot of the entries
        cache._entries[digests[1]] = replaced  # validated again meanwhile, by a request
        assert await sweep == 1  # agents[0]'s; agents[1]'s entry is not the one it read
        assert digests[0] not in cache._entries
        assert cache._entries[digests[1]] is replaced
        renewed = cache._entries[digests[2]].validated_at
        assert before <= renewed <= time.monotonic()
        assert cache.get(digests[2]) is not None
