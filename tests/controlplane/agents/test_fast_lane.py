"""The heartbeat's fast lane answers exactly as the ordinary route does, and serves the usual beat.

Every scenario runs on two real apps, one with the lane and one without, and their answers are
compared (status, header names, body, rate-limit counts): the lane may only be faster.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from tests.conftest import Stack, Tree
from tests.controlplane.agents.helpers import agent_headers, enrolled_agent
from tests.controlplane.agents.test_hot_paths import sqlite_stack
from tests.controlplane.agents.test_runtime import heartbeat

pytestmark = pytest.mark.anyio

#: Answers differ in these by nature (a fresh id, the clock); everything else must match.
VOLATILE_HEADERS = {"x-request-id", "x-ratelimit-reset", "date", "retry-after"}


@contextlib.asynccontextmanager
async def lanes(tmp_path: Path, **overrides: Any) -> AsyncIterator[tuple[Stack, Stack]]:
    """Two apps with the same settings but for the lane: (with it, without it)."""
    async with (
        sqlite_stack(tmp_path / "fast", heartbeat_fast_lane=True, **overrides) as fast,
        sqlite_stack(tmp_path / "plain", heartbeat_fast_lane=False, **overrides) as plain,
    ):
        yield fast, plain


def served_fast(stack: Stack) -> float:
    value: float = stack.app.state.metrics.heartbeats_fast_lane._value.get()
    return value


def shape(response: httpx.Response, agent_id: str) -> tuple[int, list[str], Any]:
    """What must match between the lanes: status, header names, body without clock or ids."""
    names = sorted({name.lower() for name in response.headers} - VOLATILE_HEADERS)
    body: Any = response.json() if response.content else None
    if isinstance(body, dict):
        body = {k: v for k, v in body.items() if k not in {"server_time", "request_id"}}
        if "instance" in body:
            body["instance"] = body["instance"].replace(agent_id, "{agent_id}")
    return response.status_code, names, body


Scenario = Callable[[Stack, dict[str, Any]], Awaitable[list[httpx.Response]]]


def beat_path(agent: dict[str, Any]) -> str:
    return f"/api/v1/agents/{agent['agent_id']}/heartbeat"


async def usual(stack: Stack, agent: dict[str, Any]) -> list[httpx.Response]:
    return [
        await stack.call("POST", beat_path(agent), headers=agent_headers(agent), json=heartbeat(n))
        for n in (1, 2, 3)
    ]


async def bad_bodies(stack: Stack, agent: dict[str, Any]) -> list[httpx.Response]:
    headers = {**agent_headers(agent), "Content-Type": "application/json"}
    bodies = [
        json.dumps(heartbeat(1)).encode(),  # warms the key cache
        b'{"sequence": "x"}',
        b"{",
        b"",
        b"[]",
        json.dumps(heartbeat(2, status="exploded")).encode(),
        json.dumps(heartbeat(3, uptime_seconds=-1)).encode(),
        b"\xff\xfe",
        json.dumps({**heartbeat(4), "sequence": "4"}).encode(),
        b'{"sequence": 5, "unknown": {"nested": [1, 2]}}',
        b"[" * 5000 + b"]" * 5000,
        b'{"sequence": 6, "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # deep, in an unknown field
    ]
    return [await stack.call("POST", beat_path(agent), headers=headers, content=b) for b in bodies]


async def too_large(stack: Stack, agent: dict[str, Any]) -> list[httpx.Response]:
    padding = "x" * 70_000  # over the lane's own bound and the app's (set below)
    return [
        await stack.call("POST", beat_path(agent), headers=agent_headers(agent), json=heartbeat(1)),
        await stack.call(
            "POST",
            beat_path(agent),
            headers=agent_headers(agent),
            json=heartbeat(2, agent_version=padding),
        ),
        await stack.call("POST", beat_path(agent), headers=agent_headers(agent), json=heartbeat(3)),
    ]


async def wrong_credentials(stack: Stack, agent: dict[str, Any]) -> list[httpx.Response]:
    path = beat_path(agent)
    good = agent_headers(agent)
    key = agent["api_key"]
    other = f"/api/v1/agents/agt_{'0' * 26}/heartbeat"
    return [
        await stack.call("POST", path, headers=good, json=heartbeat(1)),
        await stack.call("POST", other, headers=good, json=heartbeat(2)),
        await stack.call("POST", path, json=heartbeat(3)),
        await stack.call("POST", path, headers={"Authorization": key}, json=heartbeat(4)),
        await stack.call(
            "POST", path, headers={"Authorization": f"Basic {key}"}, json=heartbeat(5)
        ),
        await stack.call(
            "POST", path, headers={"Authorization": f"Bearer {key}x"}, json=heartbeat(6)
        ),
        await stack.call(
            "POST",
            path,
            headers=[("Authorization", f"Bearer {key}"), ("Authorization", f"Bearer {key}")],
            json=heartbeat(7),
        ),
        await stack.call(
            "POST", path, headers={"Authorization": "Bearer byteor_pat_nope"}, json=heartbeat(8)
        ),
        await stack.call("GET", path, headers=good),
        await stack.call("POST", path, headers=good, json=heartbeat(9)),
    ]


async def odd_requests(stack: Stack, agent: dict[str, Any]) -> list[httpx.Response]:
    """What the router decides on its own: other spellings of the path, a bad ``Host``."""
    good = agent_headers(agent)
    path = beat_path(agent)
    return [
        await stack.call("POST", path, headers=good, json=heartbeat(1)),
        await stack.call("POST", f"{path}/", headers=good, json=heartbeat(2)),
        await stack.call("POST", path.replace("/agents/", "/agents//"), headers=good, json={}),
        await stack.call("POST", f"{path}/x", headers=good, json=heartbeat(3)),
        await stack.call("POST", path, headers={**good, "Host": "bad host"}, json=heartbeat(4)),
        await stack.call("PUT", path, headers=good, json=heartbeat(5)),
        await stack.call(
            "POST", path, headers={**good, "X-Request-ID": "req-1"}, json=heartbeat(6)
        ),
    ]


@pytest.mark.parametrize(
    "scenario",
    [usual, bad_bodies, too_large, wrong_credentials, odd_requests],
    ids=lambda s: s.__name__,
)
async def test_both_lanes_answer_alike(tmp_path: Path, scenario: Scenario) -> None:
    shapes = []
    async with lanes(tmp_path, max_request_body_bytes=65_536) as (fast, plain):
        for stack in (fast, plain):
            tree = await stack.tree()
            agent = await enrolled_agent(stack, tree)
            responses = await scenario(stack, agent)
            shapes.append([shape(r, agent["agent_id"]) for r in responses])
    with_lane, without = shapes
    assert with_lane == without
    assert served_fast(fast) >= 1  # the lane answered part of it (each scenario has a usual beat)
    statuses = [status for status, _, _ in with_lane]
    assert all(status < 500 for status in statuses), statuses


async def test_the_usual_heartbeat_takes_the_lane(tmp_path: Path) -> None:
    async with lanes(tmp_path) as (fast, plain):
        for stack, expected in ((fast, 3), (plain, 0)):
            tree = await stack.tree()
            agent = await enrolled_agent(stack, tree)
            answers = await usual(stack, agent)
            assert [r.status_code for r in answers] == [200, 200, 200]
            # The first beat reads the key from the database; the lane serves the cached ones.
            assert served_fast(stack) == expected - 1 if expected else served_fast(stack) == 0
            await stack.app.state.heartbeats.flush()
            record = await stack.ok(
                "GET", f"/api/v1/agents/{agent['agent_id']}", headers=agent_headers(agent)
            )
            assert record["agent_version"] == "0.1.0"
            assert record["last_heartbeat_at"] is not None


@pytest.mark.usefixtures("one_rate_window")
async def test_each_beat_spends_the_agent_budget_once(tmp_path: Path) -> None:
    seen = []
    async with lanes(tmp_path, rate_limit_agent="4/minute") as (fast, plain):
        for stack in (fast, plain):
            tree = await stack.tree()
            agent = await enrolled_agent(stack, tree)
            headers = {**agent_headers(agent), "Content-Type": "application/json"}
            path = beat_path(agent)
            answers = [
                await stack.call("POST", path, headers=headers, content=json.dumps(heartbeat(1))),
                await stack.call("POST", path, headers=headers, content=b"{"),  # via the route
                await stack.call("POST", path, headers=headers, content=json.dumps(heartbeat(2))),
                await stack.call("POST", path, headers=headers, content=json.dumps(heartbeat(3))),
                await stack.call("POST", path, headers=headers, content=json.dumps(heartbeat(4))),
            ]
            seen.append([(r.status_code, r.headers.get("x-ratelimit-remaining")) for r in answers])
            refused = answers[-1]
            assert refused.headers["content-type"] == "application/problem+json"
            assert int(refused.headers["retry-after"]) >= 1
    assert seen[0] == seen[1] == [(200, "3"), (400, "2"), (200, "1"), (200, "0"), (429, "0")]


@pytest.mark.usefixtures("one_rate_window")
async def test_a_spent_address_budget_refuses_even_a_cached_key(tmp_path: Path) -> None:
    async with lanes(tmp_path, rate_limit_anonymous="3/minute") as (fast, plain):
        for stack in (fast, plain):
            tree = await stack.tree()
            agent = await enrolled_agent(stack, tree)
            path = beat_path(agent)
            ok = await stack.call("POST", path, headers=agent_headers(agent), json=heartbeat(1))
            assert ok.status_code == 200
            for n in range(3):
                wrong = {"Authorization": f"Bearer byteor_agk_guess{n}"}
                guess = await stack.call("POST", path, headers=wrong, json=heartbeat(2))
                assert guess.status_code == 401
            refused = await stack.call(
                "POST", path, headers=agent_headers(agent), json=heartbeat(3)
            )
            assert refused.status_code == 429, refused.text
            assert "failed authentications" in refused.json()["detail"]


async def test_a_rotated_key_is_handed_over_in_the_lane_without_leaving_a_session(
    tmp_path: Path,
) -> None:
    async with sqlite_stack(tmp_path, heartbeat_fast_lane=True) as stack:
        tree: Tree = await stack.tree()
        agent = await enrolled_agent(stack, tree)
        path = beat_path(agent)
        await stack.ok("POST", path, headers=agent_headers(agent), json=heartbeat(1))
        rotated = await stack.call(
            "POST", f"{tree.env_path}/agents/{agent['agent_id']}/rotate-key", tree.owner
        )
        assert rotated.status_code == 202
        opened: list[Session] = []

        def begun(session: Session, *_: Any) -> None:
            opened.append(session)

        event.listen(Session, "after_begin", begun)
        try:
            before = served_fast(stack)
            answer = await stack.ok("POST", path, headers=agent_headers(agent), json=heartbeat(2))
        finally:
            event.remove(Session, "after_begin", begun)
        assert answer["rotated_api_key"].startswith("byteor_agk_")
        assert served_fast(stack) == before + 1
        # The view's own read and the request's session for the key: both ended, none left open.
        assert opened
        assert not any(s.in_transaction() for s in opened)


def request_counts(stack: Stack) -> dict[tuple[str, ...], float]:
    """The ``byteor_http_requests`` samples: (method, route, status) -> count."""
    counts: dict[tuple[str, ...], float] = {}
    for metric in stack.app.state.metrics.requests.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                labels = sample.labels
                counts[labels["method"], labels["route"], labels["status"]] = sample.value
    return counts


async def test_beats_served_in_the_lane_are_counted_under_the_route(tmp_path: Path) -> None:
    counted = []
    async with lanes(tmp_path) as (fast, plain):
        for stack in (fast, plain):
            tree = await stack.tree()
            agent = await enrolled_agent(stack, tree)
            answers = await usual(stack, agent)
            mine = await stack.call(
                "POST",
                beat_path(agent),
                headers={**agent_headers(agent), "X-Request-ID": "beat-42"},
                json=heartbeat(4),
            )
            assert mine.headers["x-request-id"] == "beat-42"
            assert all(r.headers["x-request-id"] for r in answers)
            counted.append(
                {k: v for k, v in request_counts(stack).items() if k[1].endswith("/heartbeat")}
            )
        assert served_fast(fast) == 3
    route = "/api/v1/agents/{agent_id}/heartbeat"
    assert counted[0] == counted[1] == {("POST", route, "200"): 4.0}


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (OperationalError("SELECT 1", {}, Exception("database is locked")), 503),
        (RuntimeError("boom"), 500),
    ],
    ids=["database-busy", "unexpected"],
)
async def test_an_error_in_the_lane_is_answered_as_the_route_answers_it(
    tmp_path: Path, error: Exception, status: int
) -> None:
    shapes = []
    async with lanes(tmp_path) as (fast, plain):
        for stack in (fast, plain):
            tree = await stack.tree()
            agent = await enrolled_agent(stack, tree)
            await stack.ok(
                "POST", beat_path(agent), headers=agent_headers(agent), json=heartbeat(1)
            )
            before = served_fast(stack)

            async def failing(*_: Any) -> Any:
                raise error

            fleet = stack.app.state.fleet
            original = fleet.environment
            fleet.environment = failing
            try:
                answer = await stack.call(
                    "POST", beat_path(agent), headers=agent_headers(agent), json=heartbeat(2)
                )
            finally:
                fleet.environment = original
            assert answer.status_code == status, answer.text
            assert answer.headers["content-type"] == "application/problem+json"
            assert answer.json()["request_id"] == answer.headers["x-request-id"]
            assert "Traceback" not in answer.text
            assert "boom" not in answer.text
            status_code, names, body = shape(answer, agent["agent_id"])
            body["detail"] = body["detail"].replace(answer.headers["x-request-id"], "{id}")
            shapes.append((status_code, names, body))
            assert served_fast(stack) == (before + 1 if stack is fast else 0)
            codes = {k[2] for k in request_counts(stack) if k[1].endswith("/heartbeat")}
            assert str(status) in codes
    assert shapes[0] == shapes[1]
