"""Long polls: woken by the environment's view or a hand-over, and settled agents skip deciding."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pytest
from sqlalchemy import event

from controlplane.agents.fleetview import EnvironmentView
from controlplane.delivery import agent_routes
from controlplane.delivery.convergence import manifest_for, read_waiting_manifests
from controlplane.delivery.signals import AgentSignals, Waiter
from controlplane.settings import DeploymentMode
from tests.conftest import running_stack
from tests.controlplane.agents.helpers import agent_headers
from tests.controlplane.delivery.world import make_world

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from controlplane.agents.fleetview import FleetView
    from tests.conftest import Stack

pytestmark = pytest.mark.anyio


def _view(
    desired: str | None = "sha256:a",
    waiting: Mapping[str, int] | None = None,
    moving: frozenset[str] = frozenset(),
) -> Any:
    return EnvironmentView(
        desired_digest=desired,
        waiting=dict(waiting or {}),
        moving=moving,
        pending_keys=frozenset(),
        keyset_version=1,
        read_at=time.monotonic(),
        version=0,
    )


@dataclass
class _Views:
    """Stands in for the shared view another process's writes show up in."""

    current: EnvironmentView = field(default_factory=_view)
    reads: int = 0

    async def environment(self, org_id: str, env_id: str) -> EnvironmentView:
        self.reads += 1
        return self.current


def _signals(views: _Views) -> AgentSignals:
    return AgentSignals(cast("FleetView", views), interval=0.05)


async def _wait(signals: AgentSignals, agent_id: str, sequence: int, seconds: float) -> bool:
    with signals.waiter(agent_id) as waiter:
        waiter.sequence, waiter.desired = sequence, "sha256:a"
        with signals.watching(waiter, "org_1", "env_1"):
            return await waiter.wait(seconds)


async def test_a_manifest_waiting_in_the_view_wakes_the_poll() -> None:
    views = _Views()
    signals = _signals(views)
    polling = asyncio.create_task(_wait(signals, "agt_1", sequence=3, seconds=5))
    await asyncio.sleep(0.2)
    assert not polling.done()
    views.current = _view(waiting={"agt_1": 4})  # issued by another process
    assert await asyncio.wait_for(polling, 2) is True
    await signals.shutdown()


async def test_the_manifest_the_poll_holds_does_not_wake_it() -> None:
    views = _Views(_view(waiting={"agt_1": 3, "agt_2": 9}))
    signals = _signals(views)
    started = time.monotonic()
    assert await _wait(signals, "agt_1", sequence=3, seconds=0.4) is False
    assert time.monotonic() - started >= 0.35
    assert views.reads >= 2  # it was watched, once per interval, and stayed asleep
    await signals.shutdown()


async def test_a_new_desired_bundle_wakes_every_poll_of_the_environment() -> None:
    views = _Views()
    signals = _signals(views)
    polls = [asyncio.create_task(_wait(signals, f"agt_{i}", 0, 5)) for i in range(3)]
    await asyncio.sleep(0.2)
    views.current = _view(desired="sha256:b")
    assert await asyncio.wait_for(asyncio.gather(*polls), 2) == [True, True, True]
    await signals.shutdown()


async def test_the_watcher_stops_when_no_poll_waits() -> None:
    views = _Views()
    signals = _signals(views)
    assert await _wait(signals, "agt_1", 0, 0.1) is False
    await asyncio.sleep(0.2)
    reads = views.reads
    await asyncio.sleep(0.2)
    assert views.reads == reads
    assert not signals._environments


async def test_a_handed_over_manifest_reaches_the_waiting_poll() -> None:
    signals = AgentSignals()
    with signals.waiter("agt_1") as waiter:
        signals.deliver({"agt_1": (7, {"payload": "p"}), "agt_other": (2, {})})
        assert await waiter.wait(1) is True
        assert waiter.delivered == (7, {"payload": "p"})
    with signals.waiter("agt_1") as later:
        assert later.delivered is None  # hand-overs are for polls waiting at that moment


async def test_settled_agents_are_remembered_for_a_bounded_time() -> None:
    signals = AgentSignals(settled_seconds=0.2)
    view = _view()

    def settle(sequence: int = 0, remembered: EnvironmentView = view) -> None:
        with signals.waiter("agt_1") as waiter:
            signals.settle(waiter, sequence, remembered)

    settle()
    assert signals.settled("agt_1", 0, view)
    assert not signals.settled("agt_1", 3, view)  # the poll holds another manifest
    assert not signals.settled("agt_2", 0, view)
    assert not signals.settled("agt_1", 0, _view(desired="sha256:b"))  # another desired bundle
    assert not signals.settled("agt_1", 0, _view(moving=frozenset({"dep_1/deploying"})))
    assert not signals.settled("agt_1", 0, _view(waiting={"agt_1": 4}))  # one waits for it
    assert signals.settled("agt_1", 0, _view(waiting={"agt_2": 4}))  # for another agent
    signals.notify(["agt_1"])  # a manifest was issued to it
    assert not signals.settled("agt_1", 0, view)
    settle()
    signals.forget("agt_1")  # it reported
    assert not signals.settled("agt_1", 0, view)
    settle()
    await asyncio.sleep(0.25)
    assert not signals.settled("agt_1", 0, view)


async def test_a_rollout_moving_on_or_rolling_back_ends_what_was_remembered() -> None:
    signals = AgentSignals()
    rolling = _view(desired="sha256:a", moving=frozenset({"dep_1/deploying"}))
    with signals.waiter("agt_1") as waiter:
        signals.settle(waiter, 0, rolling)  # it runs the release; the others catch up
    assert signals.settled("agt_1", 0, rolling)
    assert not signals.settled("agt_1", 0, _view(moving=frozenset({"dep_1/rolling_back"})))
    assert not signals.settled("agt_1", 0, _view(moving=frozenset()))  # it finished
    both = frozenset({"dep_1/deploying", "dep_2/deploying"})
    assert not signals.settled("agt_1", 0, _view(moving=both))  # another one started


async def test_a_handed_over_manifest_is_remembered_while_the_view_shows_it_waiting() -> None:
    signals = AgentSignals()
    with signals.waiter("agt_1") as waiter:
        signals.settle_delivered(waiter, 7)
    # Whatever else moves: the agent holds the manifest that waits for it.
    assert signals.settled("agt_1", 7, _view(waiting={"agt_1": 7}, moving=frozenset({"d/x"})))
    assert not signals.settled("agt_1", 7, _view())  # not yet in the view, or no longer waiting
    assert not signals.settled("agt_1", 7, _view(waiting={"agt_1": 8}))  # a newer one waits
    assert not signals.settled("agt_1", 0, _view(waiting={"agt_1": 7}))


async def test_what_a_poll_decided_around_a_report_or_a_wake_up_is_not_remembered() -> None:
    """A decision may have read the state from before the agent's report was applied, or
    before a manifest issued meanwhile: remembering it would hold a stale answer."""
    signals = AgentSignals()
    view = _view()
    with signals.waiter("agt_1") as waiter:
        signals.forget("agt_1")  # the agent reported while this poll was deciding
        signals.settle(waiter, 0, view)
        signals.settle_delivered(waiter, 3)
    assert not signals.settled("agt_1", 0, view)
    assert not signals.settled("agt_1", 3, _view(waiting={"agt_1": 3}))
    with signals.waiter("agt_1") as waiter:
        signals.notify(["agt_1"])  # woken: it looks again before it waits
        signals.settle(waiter, 0, view)
    assert not signals.settled("agt_1", 0, view)
    with signals.waiter("agt_1") as waiter:
        signals.settle(waiter, 0, view)
    assert signals.settled("agt_1", 0, view)
    assert not AgentSignals(settled_seconds=0).settled("agt_1", 0, view)


@dataclass
class _Statements:
    texts: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _count_statements(stack: Stack) -> Iterator[_Statements]:
    seen = _Statements()

    def record(*args: Any) -> None:
        seen.texts.append(str(args[2]))

    engines = {stack.app.state.database.engine.sync_engine}
    engines.add(stack.app.state.database.reader_engine.sync_engine)
    for engine in engines:
        event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", record)


async def test_a_settled_agent_waits_without_deciding_and_still_gets_the_next_manifest(
    stack: Stack,
) -> None:
    world = await make_world(stack, agents=1)
    agent = world.agents[0]
    url = f"/api/v1/agents/{agent['agent_id']}/deployment"
    first = await stack.call("GET", url, headers=agent_headers(agent))
    assert first.headers["etag"] == '"seq-0"'
    signals: AgentSignals = stack.app.state.agent_signals
    view = await stack.app.state.fleet.environment(agent["org_id"], agent["environment_id"])
    assert signals.settled(agent["agent_id"], 0, view)

    with _count_statements(stack) as statements:
        again = await stack.call(
            "GET", url, headers=agent_headers(agent) | {"If-None-Match": '"seq-0"'}
        )
    assert again.status_code == 304
    assert not [s for s in statements.texts if "deployment_targets" in s], statements.texts

    waiting = asyncio.create_task(
        stack.call(
            "GET",
            url,
            headers=agent_headers(agent) | {"If-None-Match": '"seq-0"'},
            params={"wait": 10},
        )
    )
    await asyncio.sleep(0.2)
    await world.deploy()
    woke = await asyncio.wait_for(waiting, timeout=10)
    assert woke.status_code == 200
    assert woke.json()["sequence"] == 1
    assert woke.json()["manifest"]["signatures"]
    assert not signals.settled(agent["agent_id"], 0, view)


async def test_a_poll_woken_by_its_own_release_going_live_remembers_the_agent_settled(
    stack: Stack,
) -> None:
    """When a rollout finishes, every waiting poll of the environment wakes (a new desired
    bundle) and decides. An agent that runs it is settled: its poll goes on waiting (nothing
    new: its ETag still names the manifest it applied), and its next poll must not decide
    again (10,000 decisions at once, at the end of every rollout)."""
    world = await make_world(stack, agents=1)
    (agent,) = world.agents
    url = f"/api/v1/agents/{agent['agent_id']}/deployment"
    created = (await world.deploy()).json()
    await world.wait_status(created["id"], "deploying")
    manifest = await world.manifest(agent)
    held = f'"seq-{manifest.sequence}"'
    assert (await world.report(agent, manifest, "activating")).status_code == 204
    waiting = asyncio.create_task(
        stack.call(
            "GET", url, headers=agent_headers(agent) | {"If-None-Match": held}, params={"wait": 3}
        )
    )
    await asyncio.sleep(0.2)
    assert (await world.report(agent, manifest, "active")).status_code == 204
    await world.heartbeat(agent, manifest.bundle_digest)
    await world.wait_status(created["id"], "active")
    signals: AgentSignals = stack.app.state.agent_signals
    deadline = time.monotonic() + 5
    while True:  # the waiting poll wakes on the new desired bundle, decides and remembers
        view = await stack.app.state.fleet.environment(agent["org_id"], agent["environment_id"])
        if signals.settled(agent["agent_id"], manifest.sequence, view):
            break
        assert time.monotonic() < deadline, "the woken poll never remembered its answer"
        await asyncio.sleep(0.05)
    assert view.desired_digest == manifest.bundle_digest
    assert not waiting.done()  # nothing new for the agent: it goes on waiting
    with _count_statements(stack) as statements:
        again = await stack.call("GET", url, headers=agent_headers(agent) | {"If-None-Match": held})
    assert again.status_code == 304
    assert not [s for s in statements.texts if "deployment_targets" in s], statements.texts
    woke = await asyncio.wait_for(waiting, timeout=15)
    assert (woke.status_code, woke.headers["etag"]) == (304, held)


def _targets_read(statements: _Statements) -> list[str]:
    """The agent's own manifests read (a decision); the environment's view reads them apart."""
    return [s for s in statements.texts if "WHERE deployment_targets.agent_id =" in s]


async def test_during_a_rollout_polls_of_agents_holding_or_running_the_release_wait_at_once(
    stack: Stack,
) -> None:
    """While a rollout moves, every poll of every host used to take a full decision: a fleet's
    worth at once right after the hand-over, and again each round until the last host caught
    up. A host that holds the manifest waiting for it, or already runs the release, waits."""
    world = await make_world(stack, agents=2)
    agent, _slow = world.agents  # the other one never reports: the rollout keeps moving
    url = f"/api/v1/agents/{agent['agent_id']}/deployment"
    headers = agent_headers(agent)
    polling = asyncio.create_task(
        stack.call("GET", url, headers=headers | {"If-None-Match": '"seq-0"'}, params={"wait": 10})
    )
    await asyncio.sleep(0.2)
    created = (await world.deploy()).json()
    handed = await asyncio.wait_for(polling, timeout=10)
    assert handed.status_code == 200, handed.text
    held = handed.headers["etag"]
    assert held == f'"seq-{handed.json()["sequence"]}"' != '"seq-0"'
    assert (await world.detail(created["id"]))["status"] == "deploying"

    with _count_statements(stack) as statements:
        again = await stack.call("GET", url, headers=headers | {"If-None-Match": held})
    assert again.status_code == 304
    assert not _targets_read(statements), statements.texts

    manifest = await world.manifest(agent)  # the same manifest, read in full (a decision)
    assert f'"seq-{manifest.sequence}"' == held
    assert (await world.report(agent, manifest, "activating")).status_code == 204
    with _count_statements(stack) as statements:  # it reported: decide again
        again = await stack.call("GET", url, headers=headers | {"If-None-Match": held})
    assert again.status_code == 304
    assert _targets_read(statements)
    assert (await world.report(agent, manifest, "active")).status_code == 204
    # Nothing more to apply, and nothing new to say: the ETag it holds still names the newest.
    done = await stack.call("GET", url, headers=headers | {"If-None-Match": held})
    assert done.status_code == 304
    assert done.headers["etag"] == held
    fresh = await stack.call("GET", url, headers=headers)  # a restarted agent holds no ETag
    assert fresh.status_code == 200
    assert fresh.json() == {"manifest": None, "sequence": manifest.sequence}
    assert fresh.headers["etag"] == held

    with _count_statements(stack) as statements:
        waits = await stack.call("GET", url, headers=headers | {"If-None-Match": held})
    assert waits.status_code == 304
    assert not _targets_read(statements), statements.texts
    assert (await world.detail(created["id"]))["status"] == "deploying"


async def test_a_manifest_issued_by_another_process_ends_what_a_poll_remembered(
    stack: Stack,
) -> None:
    """Another process's manifests show in the environment's view, not in this process's
    signals: a remembered answer must not hide one."""
    world = await make_world(stack, agents=1)
    (agent,) = world.agents
    url = f"/api/v1/agents/{agent['agent_id']}/deployment"
    headers = agent_headers(agent)
    assert (await stack.call("GET", url, headers=headers)).headers["etag"] == '"seq-0"'
    signals: AgentSignals = stack.app.state.agent_signals
    created = (await world.deploy()).json()
    await world.wait_status(created["id"], "deploying")
    # As if issued elsewhere: this process's memory of the agent survives the rollout.
    view = await stack.app.state.fleet.environment(agent["org_id"], agent["environment_id"])
    with signals.waiter(agent["agent_id"]) as waiter:
        signals.settle(waiter, 0, dataclasses.replace(view, waiting={}))
    answer = await stack.call("GET", url, headers=headers | {"If-None-Match": '"seq-0"'})
    assert answer.status_code == 200, answer.text
    assert answer.json()["sequence"] == view.waiting[agent["agent_id"]]


async def test_a_deployment_check_reads_the_agent_manifests_once(stack: Stack) -> None:
    """The decision's own read of the newest manifest is what a waiting poll later compares
    with; reading it a second time cost a statement on every deployment check of a fleet."""
    world = await make_world(stack, agents=1)
    (agent,) = world.agents
    created = (await world.deploy()).json()
    await world.wait_status(created["id"], "deploying")
    url = f"/api/v1/agents/{agent['agent_id']}/deployment"
    with _count_statements(stack) as statements:
        answer = await stack.call("GET", url, headers=agent_headers(agent))
    assert answer.status_code == 200
    assert answer.json()["sequence"] == 1
    # The agent's own manifests (the environment's shared view reads all of them, apart).
    reads = [s for s in statements.texts if "WHERE deployment_targets.agent_id =" in s]
    assert len(reads) == 1, reads


@dataclass
class _Manifests:
    """Stands in for the batched read of the manifests a view shows waiting."""

    stored: dict[str, tuple[int, Any]] = field(default_factory=dict)
    asked: list[dict[str, int]] = field(default_factory=list)
    fail: bool = False

    async def __call__(self, wanted: Mapping[str, int]) -> dict[str, tuple[int, Any]]:
        self.asked.append(dict(wanted))
        if self.fail:
            raise ConnectionError("database unreachable")
        return {a: m for a, m in self.stored.items() if wanted.get(a) == m[0]}


@contextlib.contextmanager
def _poll(signals: AgentSignals, agent_id: str, sequence: int = 1) -> Iterator[Waiter]:
    """A poll of ``agent_id`` holding manifest ``sequence``, waiting on env_1's view."""
    with signals.waiter(agent_id) as waiter:
        waiter.sequence, waiter.desired = sequence, "sha256:a"
        with signals.watching(waiter, "org_1", "env_1"):
            yield waiter


async def test_polls_woken_by_the_view_get_their_manifests_from_one_read() -> None:
    """Manifests another process issued reach every woken poll from one batched read."""
    views = _Views()
    manifests = _Manifests(stored={f"agt_{n}": (3, {"payload": f"p{n}"}) for n in range(4)})
    signals = AgentSignals(cast("FleetView", views), interval=0.05, manifests=manifests)
    with contextlib.ExitStack() as polls:
        waiters = []
        for n in range(4):
            waiters.append(polls.enter_context(_poll(signals, f"agt_{n}")))
        # agt_3 holds manifest 3 already: nothing new for it; agt_2's is newer than the view's.
        waiters[3].sequence = 3
        views.current = _view(waiting={"agt_0": 3, "agt_1": 3, "agt_2": 2, "agt_3": 3})
        woken = await asyncio.gather(*(w.wait(1) for w in waiters[:3]))
        assert woken == [True, True, True]
        assert manifests.asked == [{"agt_0": 3, "agt_1": 3, "agt_2": 2}]
        assert [w.delivered for w in waiters] == [
            (3, {"payload": "p0"}),
            (3, {"payload": "p1"}),
            None,  # not what the view showed: that poll decides in full
            None,
        ]
        assert not waiters[3].event.is_set()


async def test_a_poll_handed_its_manifest_here_is_not_read_again() -> None:
    views = _Views()
    manifests = _Manifests(stored={"agt_1": (3, {"payload": "read"})})
    signals = AgentSignals(cast("FleetView", views), interval=0.05, manifests=manifests)
    with _poll(signals, "agt_1") as waiter:
        signals.deliver({"agt_1": (3, {"payload": "issued here"})})
        waiter.event.clear()  # as if the poll had not looked yet
        views.current = _view(waiting={"agt_1": 3})
        assert await waiter.wait(1) is True
    assert manifests.asked == []
    assert waiter.delivered == (3, {"payload": "issued here"})


async def test_a_failed_read_of_waiting_manifests_still_wakes_the_polls() -> None:
    views = _Views()
    manifests = _Manifests(fail=True)
    signals = AgentSignals(cast("FleetView", views), interval=0.05, manifests=manifests)
    with _poll(signals, "agt_1") as waiter:
        views.current = _view(waiting={"agt_1": 3})
        assert await waiter.wait(1) is True
    assert manifests.asked == [{"agt_1": 3}]
    assert waiter.delivered is None  # the poll decides in full


async def test_a_poll_in_another_process_answers_with_the_rollout_manifest_without_deciding(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An API-only process (no job worker) shares the database with the one that rolls out:
    its waiting poll gets the manifest from the batched read, not from a decision of its own."""
    world = await make_world(stack, agents=2)
    agent = world.agents[0]
    settings = stack.settings.model_copy(
        update={"deployment_mode": DeploymentMode.API, "fleet_view_ttl_seconds": 0.1}
    )
    decisions: list[str] = []
    decide = manifest_for

    async def counted(session: Any, delivery: Any, agent_id: str, *args: Any) -> Any:
        decisions.append(agent_id)
        return await decide(session, delivery, agent_id, *args)

    monkeypatch.setattr(agent_routes, "manifest_for", counted)
    async with running_stack(settings, stack.backend) as other:
        url = f"/api/v1/agents/{agent['agent_id']}/deployment?wait=20"
        headers = agent_headers(agent) | {"If-None-Match": '"seq-0"'}
        poll = asyncio.create_task(other.call("GET", url, headers=headers))
        signals: AgentSignals = other.app.state.agent_signals
        for _ in range(200):
            if agent["agent_id"] in signals._waiters and decisions:
                break
            await asyncio.sleep(0.01)
        assert decisions == [agent["agent_id"]]  # the poll's first decision: nothing to apply
        created = (await world.deploy()).json()
        answer = await asyncio.wait_for(poll, timeout=20)
    assert answer.status_code == 200, answer.text
    assert decisions == [agent["agent_id"]]  # woken with its manifest: no second decision
    expected = await world.manifest(agent)  # (decided by the first process)
    assert expected.deployment_id == created["id"]
    assert answer.json()["sequence"] == expected.sequence
    assert answer.json()["manifest"] is not None


async def test_the_batched_read_finds_only_manifests_a_decision_would_serve_unchanged(
    stack: Stack,
) -> None:
    world = await make_world(stack, agents=2)
    created = (await world.deploy()).json()
    await world.wait_status(created["id"], "deploying")
    first, second = world.agents
    view = await stack.app.state.fleet.environment(first["org_id"], first["environment_id"])
    wanted = {a["agent_id"]: view.waiting[a["agent_id"]] for a in world.agents}
    found = await read_waiting_manifests(stack.database, wanted)
    assert {a: s for a, (s, _) in found.items()} == wanted
    assert found[first["agent_id"]][1]["payload"]  # the signed envelope itself
    # Another sequence than the newest: left to a full decision.
    stale = {first["agent_id"]: wanted[first["agent_id"]] - 1, "agt_unknown": 1}
    assert await read_waiting_manifests(stack.database, stale) == {}
    # The agent reported: its manifest no longer waits for it.
    reported = await world.report(second, await world.manifest(second), "activating")
    assert reported.status_code == 204, reported.text
    found = await read_waiting_manifests(stack.database, wanted)
    assert set(found) == {first["agent_id"]}
    # A rollout being cancelled (rolling back) no longer serves its deploy manifests as they are.
    path = f"{world.tree.env_path}/deployments/{created['id']}/cancel"
    cancelled = await stack.call("POST", path, world.tree.owner)
    assert cancelled.status_code == 202, cancelled.text
    assert await read_waiting_manifests(stack.database, wanted) == {}


async def test_a_slow_read_of_waiting_manifests_delays_only_the_polls_it_is_for() -> None:
    """A poll woken by a new desired bundle does not wait for the batched read; the others wait
    for it at most its bound, then decide in full."""
    views = _Views()
    release = asyncio.Event()

    async def stuck(wanted: Mapping[str, int]) -> dict[str, tuple[int, Any]]:
        await release.wait()
        return {}

    signals = AgentSignals(cast("FleetView", views), interval=0.05, manifests=stuck)
    with contextlib.ExitStack() as polls:
        waiters = []
        for agent_id in ("agt_bundle", "agt_manifest"):
            waiters.append(polls.enter_context(_poll(signals, agent_id)))
        views.current = _view(desired="sha256:b", waiting={"agt_manifest": 2})
        started = time.monotonic()
        assert await waiters[0].wait(0.5) is True
        assert time.monotonic() - started < 0.5
        assert not waiters[1].event.is_set()  # still reading
        assert await waiters[1].wait(3) is True  # the read's bound: max(1 s, 2 intervals)
        assert waiters[1].delivered is None
    release.set()


async def test_a_manifest_read_for_a_poll_is_marked_as_read() -> None:
    """A poll answering with a manifest the watcher read keeps a report made meanwhile in
    mind (``read``); one issued here does not need to."""
    views = _Views()
    manifests = _Manifests(stored={"agt_1": (3, {"payload": "read"})})
    signals = AgentSignals(cast("FleetView", views), interval=0.05, manifests=manifests)
    with _poll(signals, "agt_1") as waiter:
        views.current = _view(waiting={"agt_1": 3})
        assert await waiter.wait(1) is True
        assert (waiter.delivered, waiter.read) == ((3, {"payload": "read"}), True)
        signals.deliver({"agt_1": (4, {"payload": "issued here"})})
        assert (waiter.delivered, waiter.read) == ((4, {"payload": "issued here"}), False)


async def test_a_full_decision_during_a_rollout_costs_two_statements(stack: Stack) -> None:
    """After every report a host's next poll decides in full: 10,000 decisions per rollout.
    It reads the agent, then its newest manifest with that manifest's deployment in one
    statement; the desired state comes from the environment's view."""
    world = await make_world(stack, agents=2)
    agent, _slow = world.agents  # the other one never reports: the rollout keeps moving
    created = (await world.deploy()).json()
    await world.wait_status(created["id"], "deploying")
    manifest = await world.manifest(agent)
    assert (await world.report(agent, manifest, "active")).status_code == 204
    await stack.app.state.fleet.environment(agent["org_id"], agent["environment_id"])  # warm
    url = f"/api/v1/agents/{agent['agent_id']}/deployment"
    held = f'"seq-{manifest.sequence}"'
    with _count_statements(stack) as statements:
        answer = await stack.call(
            "GET", url, headers=agent_headers(agent) | {"If-None-Match": held}
        )
    assert answer.status_code == 304
    reads = [s for s in statements.texts if s.lstrip().upper().startswith("SELECT")]
    assert len(reads) == 2, "\n\n".join(reads)
    assert "FROM agents" in reads[0]
    assert "FROM deployment_targets JOIN deployments" in reads[1]
    assert not [s for s in statements.texts if "FROM environments" in s], statements.texts
    assert (await world.detail(created["id"]))["status"] == "deploying"


async def test_a_decision_against_a_view_behind_the_store_issues_only_what_the_store_says(
    stack: Stack,
) -> None:
    """The view may be up to its age behind another process's change of the desired state.
    A decision against it may plan to issue, but issuing decides again against the store."""
    from controlplane.delivery.convergence import manifest_for
    from controlplane.delivery.rollout import Delivery
    from controlplane.environments.service import DesiredState

    world = await make_world(stack, agents=1)
    (agent,) = world.agents
    created = (await world.deploy()).json()
    await world.activate_all(created["id"])
    view = await stack.app.state.fleet.environment(agent["org_id"], agent["environment_id"])
    assert view.desired is not None
    assert view.desired.deployment_id == created["id"]
    stale = DesiredState(
        deployment_id=created["id"], bundle_id=view.desired.bundle_id, bundle_digest="sha256:0"
    )
    async with stack.app.state.database.readers() as session:
        served = await manifest_for(
            session, Delivery.of_app(stack.app.state), agent["agent_id"], stale
        )
    assert served.issued_to == ()  # the agent runs what the store says is desired
    assert served.manifest is None
    detail = await world.detail(created["id"])
    assert [t["sequence"] for t in detail["targets"]] == [1]
