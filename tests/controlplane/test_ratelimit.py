"""Sliding-window budgets per credential, per address and per environment."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from limits import parse

from controlplane.app import create_app
from controlplane.auth.service import bootstrap_owner
from controlplane.ratelimit.limiter import Budgets, RateLimiter, SweptMemoryStorage
from controlplane.settings import Settings
from tests.conftest import Actor, Stack, in_process_client
from tests.controlplane.agents.helpers import (
    agent_headers,
    enroll,
    enrolled_agent,
    enrollment_token,
)
from tests.controlplane.artifacts.kit import metadata, signing_agent, upload

pytestmark = pytest.mark.anyio

TINY: dict[str, Any] = {
    "rate_limit_bearer": "5/minute",
    "rate_limit_agent": "3/minute",
    "rate_limit_artifact_upload": "2/minute",
    "rate_limit_anonymous": "4/minute",
    "rate_limit_enrollment": "3/minute",
}


@pytest.fixture
async def limited(tmp_path: Path, one_rate_window: None) -> AsyncIterator[tuple[Stack, Actor]]:
    """An app with tiny budgets (and a generous one where setup needs it), in one window."""
    settings = Settings(data_dir=tmp_path, **(TINY | {"rate_limit_bearer": "40/minute"}))
    app = create_app(settings)
    async with app.lifespan(), in_process_client(app) as client:
        stack = Stack(
            client=client, app=app, database=app.state.database, backend="sqlite", settings=settings
        )
        async with stack.database.sessionmaker() as session:
            boot = await bootstrap_owner(session, "limits@example.com", "limits")
        yield stack, Actor(user_id=boot.user_id, token=boot.token)


def assert_limited(response: httpx.Response, limit: int) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-ratelimit-limit"] == str(limit)
    assert response.headers["x-ratelimit-remaining"] == "0"
    assert int(response.headers["x-ratelimit-reset"]) > time.time()


async def test_bearer_budget_is_per_token(limited: tuple[Stack, Actor]) -> None:
    stack, owner = limited
    other = await stack.ok("POST", "/api/v1/tokens", owner, json={"name": "second"})
    seen = []
    for _ in range(40 - 1):  # the token above already spent one
        response = await stack.call("GET", "/api/v1/me", owner)
        if response.status_code == 429:
            break
        seen.append(int(response.headers["x-ratelimit-remaining"]))
    assert seen == sorted(seen, reverse=True)
    assert seen[-1] == 0
    assert_limited(await stack.call("GET", "/api/v1/me", owner), 40)
    fresh = await stack.call(
        "GET", "/api/v1/me", headers={"Authorization": f"Bearer {other['token']}"}
    )
    assert fresh.status_code == 200
    assert fresh.headers["x-ratelimit-remaining"] == "39"


async def test_agent_budget_and_exempt_probes(limited: tuple[Stack, Actor]) -> None:
    stack, owner = limited
    tree = await stack.tree(owner)
    agent = await enrolled_agent(stack, tree)
    url = f"/api/v1/agents/{agent['agent_id']}/heartbeat"
    statuses = [
        (
            await stack.call("POST", url, headers=agent_headers(agent), json={"sequence": i})
        ).status_code
        for i in range(3)
    ]
    assert statuses == [200, 200, 200]
    assert_limited(
        await stack.call("POST", url, headers=agent_headers(agent), json={"sequence": 9}), 3
    )
    for _ in range(20):
        probe = await stack.call("GET", "/healthz")
        assert probe.status_code == 200
        assert "x-ratelimit-limit" not in probe.headers


async def test_anonymous_and_failed_authentication_budget(limited: tuple[Stack, Actor]) -> None:
    stack, owner = limited
    first = await stack.call("GET", "/api/v1/orgs")
    assert first.status_code == 401
    assert first.headers["x-ratelimit-limit"] == "4"
    for _ in range(3):
        await stack.call(
            "GET", "/api/v1/orgs", headers={"Authorization": "Bearer byteor_pat_guess"}
        )
    # the address spent its budget on failures: even a valid token is refused for now
    assert_limited(await stack.call("GET", "/api/v1/me", owner), 4)


async def test_enrollment_throttle_per_environment(limited: tuple[Stack, Actor]) -> None:
    stack, owner = limited
    tree = await stack.tree(owner)
    token = await enrollment_token(stack, tree, max_uses=10)
    codes = [
        (await enroll(stack, tree, token["token"], hostname=f"h{i}")).status_code for i in range(3)
    ]
    assert codes == [201, 201, 201]
    refused = await enroll(stack, tree, token["token"], hostname="h4")
    assert_limited(refused, 3)
    other = await stack.ok(
        "POST", f"{tree.project_path}/environments", owner, json={"name": "other"}
    )
    other_path = f"{tree.project_path}/environments/{other['id']}"
    other_token = await stack.ok("POST", f"{other_path}/enrollment-tokens", owner, json={})
    elsewhere = await stack.call(
        "POST",
        f"{other_path}/agents",
        headers={"Authorization": f"Bearer {other_token['token']}"},
        json={},
    )
    assert elsewhere.status_code == 201


async def test_failed_enrollments_throttle_the_address(limited: tuple[Stack, Actor]) -> None:
    stack, owner = limited
    tree = await stack.tree(owner)
    for _ in range(3):
        assert (await enroll(stack, tree, "byteor_enr_" + "x" * 43)).status_code == 401
    token = await enrollment_token(stack, tree)
    assert_limited(await enroll(stack, tree, token["token"]), 3)


async def test_inflight_cap_is_429_with_retry_after_too(limited: tuple[Stack, Actor]) -> None:
    stack, owner = limited
    tree = await stack.tree(owner)
    await stack.ok("PUT", tree.env_path, owner, json={"approvals_required": 1})
    draft = await stack.ok(
        "POST",
        f"{tree.env_path}/drafts",
        owner,
        json={
            "name": "d",
            "plan": {
                "name": "x",
                "target": "LaneGraph",
                "lanes": [{"name": "in", "kind": "Events", "on_full": "Block"}],
                "roles": [{"name": "r", "kind": "stage", "inputs": ["in"]}],
            },
        },
    )
    version = await stack.ok("POST", f"{tree.env_path}/drafts/{draft['id']}/version", owner)
    await enrolled_agent(stack, tree)
    body = {"pipeline_version_id": version["id"]}
    assert (
        await stack.call("POST", f"{tree.env_path}/deployments", owner, json=body)
    ).status_code == 201
    capped = await stack.call("POST", f"{tree.env_path}/deployments", owner, json=body)
    assert capped.status_code == 429
    assert int(capped.headers["retry-after"]) >= 1


async def test_openapi_documents_429_and_413(limited: tuple[Stack, Actor]) -> None:
    stack, _ = limited
    schema = (await stack.call("GET", "/schema/openapi.json")).json()
    responses = schema["paths"]["/api/v1/orgs"]["post"]["responses"]
    assert "429" in responses
    assert "413" in responses
    assert "Retry-After" in responses["429"]["headers"]
    assert "X-RateLimit-Remaining" in responses["429"]["headers"]


def _limiter(limit: str) -> RateLimiter:
    budgets = Budgets(
        bearer=parse(limit),
        agent=parse(limit),
        artifact_upload=parse(limit),
        anonymous=parse(limit),
        enrollment=parse(limit),
    )
    return RateLimiter("memory://", budgets)


@pytest.mark.usefixtures("one_rate_window")
async def test_a_peek_sees_every_hit_of_this_process() -> None:
    limiter = _limiter("3/minute")
    # Never counted: the full budget, without touching the storage.
    fresh = await limiter.peek("anonymous", "10.0.0.1")
    assert (fresh.allowed, fresh.remaining, fresh.limit) == (True, 3, 3)
    for remaining in (2, 1, 0):
        hit = await limiter.hit("anonymous", "10.0.0.1")
        assert (hit.allowed, hit.remaining) == (True, remaining)
    spent = await limiter.peek("anonymous", "10.0.0.1")
    assert not spent.allowed
    assert spent.retry_after >= 1
    # Other keys and other buckets keep their own budgets.
    assert (await limiter.peek("anonymous", "10.0.0.2")).allowed
    assert (await limiter.peek("enrollment_failures", "10.0.0.1")).allowed
    refused = await limiter.hit("anonymous", "10.0.0.1")
    assert not refused.allowed


def test_the_memory_storage_sweeps_inline_without_timer_threads() -> None:
    storage = SweptMemoryStorage(sweep_seconds=0.05)
    storage.timer.join()  # the parent's one start-up timer has fired
    # No thread of its own: none that was not running before (threads of earlier tests may end).
    before = set(threading.enumerate())
    storage.incr("short", 0.01)
    storage.incr("unread", 0.01)
    storage.incr("long", 60)
    assert set(threading.enumerate()) <= before
    time.sleep(0.06)
    assert storage.get("short") == 0  # expired counters read as zero, swept or not
    assert "unread" in storage.expirations  # nothing read it, nothing swept it yet
    storage.incr("long", 60)  # the next count past the interval sweeps
    assert "unread" not in storage.expirations
    assert storage.get("long") == 2
    assert set(threading.enumerate()) <= before


async def test_counted_keys_are_forgotten_once_their_windows_pass() -> None:
    limiter = _limiter("2/second")
    await limiter.hit("agent", "key-a")
    assert ("agent", "key-a") in limiter._counted
    limiter._counted[("agent", "key-a")] -= 3  # counted three seconds ago: both windows passed
    assert (await limiter.peek("agent", "key-a")).remaining == 2
    limiter._next_prune = 0
    await limiter.hit("agent", "key-b")
    assert ("agent", "key-a") not in limiter._counted
    assert ("agent", "key-b") in limiter._counted


async def test_artifact_uploads_spend_their_own_budget(limited: tuple[Stack, Actor]) -> None:
    stack, owner = limited
    tree = await stack.tree(owner)
    agent = await signing_agent(stack, tree)

    async def upload_one(n: int) -> httpx.Response:
        content = f"telemetry {n} {tree.env_id}".encode()
        return await upload(stack, agent, metadata(agent, content, kind="telemetry"), content)

    first, second = await upload_one(1), await upload_one(2)
    assert [first.status_code, second.status_code] == [201, 201], second.text
    assert [r.headers["x-ratelimit-limit"] for r in (first, second)] == ["2", "2"]
    assert [r.headers["x-ratelimit-remaining"] for r in (first, second)] == ["1", "0"]
    assert_limited(await upload_one(3), 2)
    # The agent's own budget (3/minute) was not spent by the uploads.
    beat = await stack.call(
        "POST",
        f"/api/v1/agents/{agent.agent_id}/heartbeat",
        headers=agent.headers,
        json={"sequence": 1},
    )
    assert beat.status_code == 200, beat.text
    assert (beat.headers["x-ratelimit-limit"], beat.headers["x-ratelimit-remaining"]) == ("3", "2")
