"""Rate limits shared through Redis by two real server processes, and a real agent hitting its budget."""

from __future__ import annotations

import math
import secrets
import subprocess
from pathlib import Path

import httpx

from tests.backends import service_unavailable
from tests.conftest import within_one_rate_window
from tests.e2e.conftest import clean_env, console_script, start_server
from tests.e2e.fleet import (
    FAST_AGENT_SERVER_ENV,
    ThrottlingProxy,
    bootstrap_tenant,
    start_agent,
    wait_for,
)

REDIS = "redis://127.0.0.1:6379/0"


def require_redis() -> None:
    """Skip (or under ``BYTEOR_REQUIRE_SERVICES=1`` fail) when Redis does not answer."""
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return
    except OSError as exc:
        service_unavailable(f"Redis at 127.0.0.1:6379 is unreachable: {exc}")


def test_two_processes_share_one_budget_through_redis(tmp_path: Path) -> None:
    require_redis()
    env = clean_env(
        BYTEOR_CLOUD_RATE_LIMIT_STORAGE=REDIS,
        # a fresh namespace per run; the keys expire with their one-minute window
        BYTEOR_CLOUD_RATE_LIMIT_KEY_PREFIX=f"byteor-test-{secrets.token_hex(6)}",
        BYTEOR_CLOUD_RATE_LIMIT_BEARER="6/minute",
    )
    first = start_server(tmp_path, env, limits=True)
    second = start_server(tmp_path, env, limits=True)
    try:
        token = subprocess.run(
            [console_script("byteor-controlplane"), "bootstrap", "--email", "redis@example.com"],
            cwd=tmp_path,
            env=clean_env(),
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        headers = {"Authorization": f"Bearer {token}"}
        within_one_rate_window()
        remaining = []
        for server in (first, second, first, second, first, second):
            response = httpx.get(f"{server.url}/api/v1/me", headers=headers)
            assert response.status_code == 200, response.text
            remaining.append(int(response.headers["x-ratelimit-remaining"]))
        assert remaining == [5, 4, 3, 2, 1, 0]
        for server in (first, second):
            refused = httpx.get(f"{server.url}/api/v1/me", headers=headers)
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
    finally:
        first.stop()
        second.stop()


def test_agent_backs_off_on_the_real_heartbeat_limit(tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        clean_env(**FAST_AGENT_SERVER_ENV, BYTEOR_CLOUD_RATE_LIMIT_AGENT="3/5 seconds"),
    )
    try:
        tenant = bootstrap_tenant(server)
        proxy = ThrottlingProxy(upstream=server.url, retry_after=0, throttle_seconds=0)
        proxy.start()
        token = tenant.enrollment_token()["token"]
        agent = start_agent(
            tmp_path,
            {
                "BYTEOR_API_BASE_URL": proxy.url,
                "BYTEOR_ENROLLMENT_TOKEN": token,
                "BYTEOR_ORG_ID": tenant.org_id,
                "BYTEOR_PROJECT_ID": tenant.project_id,
                "BYTEOR_ENVIRONMENT_ID": tenant.env_id,
                "BYTEOR_STATE_DIR": str(tmp_path / "state"),
                "BYTEOR_HEARTBEAT_INTERVAL_SECONDS": "1",
            },
        )
        try:
            wait_for(
                lambda: (
                    sum(1 for _, status in proxy.heartbeats if status == 429) >= 2
                    and proxy.heartbeats[-1][1] == 200
                ),
                timeout=40,
                what="the agent to hit the limit and recover",
            )
        finally:
            assert agent.stop() == 0, agent.output()
            proxy.stop()
        heartbeats = list(proxy.heartbeats)
        # The agent waits as long as each refusal's Retry-After asks before it tries again.
        for refused_at, retry_after in proxy.upstream_refusals:
            later = [t for t, _ in heartbeats if t > refused_at]
            if later:
                assert later[0] >= refused_at + retry_after - 0.25, (refused_at, heartbeats)
        # And the server keeps the budget: 3 accepted per 5 s window (a sliding window counter
        # admits at most the limit within each of its fixed windows, so at most one limit more
        # than the span's windows over any span).
        accepted = [t for t, status in heartbeats if status == 200]
        span = accepted[-1] - accepted[0]
        assert len(accepted) <= 3 * (math.floor(span / 5) + 2), heartbeats
        # It was refused, and went on after: a real limit, and a real recovery.
        assert proxy.upstream_refusals
        assert agent.process.returncode == 0
    finally:
        server.stop()
