"""The agent as a real process against ``byteor-controlplane serve``, with only BYTEOR_* settings."""

from __future__ import annotations

import itertools
import json
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import clean_env, console_script, start_server
from tests.e2e.fleet import (
    FAST_AGENT_SERVER_ENV,
    Tenant,
    ThrottlingProxy,
    bootstrap_tenant,
    start_agent,
    wait_for,
)


@pytest.fixture
def tenant(tmp_path: Path) -> Iterator[Tenant]:
    server = start_server(tmp_path, clean_env(**FAST_AGENT_SERVER_ENV))
    try:
        yield bootstrap_tenant(server)
    finally:
        server.stop()


def enrollment_env(
    tenant: Tenant, token: str, state_dir: Path, url: str | None = None
) -> dict[str, str]:
    return {
        "BYTEOR_API_BASE_URL": url or tenant.server.url,
        "BYTEOR_ENROLLMENT_TOKEN": token,
        "BYTEOR_ORG_ID": tenant.org_id,
        "BYTEOR_PROJECT_ID": tenant.project_id,
        "BYTEOR_ENVIRONMENT_ID": tenant.env_id,
        "BYTEOR_STATE_DIR": str(state_dir),
        "BYTEOR_HEARTBEAT_INTERVAL_SECONDS": "1",
    }


def agent_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script("byteor-agent"), *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def online(tenant: Tenant) -> dict[str, object] | None:
    agents = tenant.agents()
    return next((a for a in agents if a["status"] == "online" and a["last_heartbeat_at"]), None)


def test_enrolls_once_heartbeats_and_restarts_without_the_token(
    tenant: Tenant, tmp_path: Path
) -> None:
    token = tenant.enrollment_token(max_uses=1)
    state_dir = tmp_path / "agent-state"
    env = enrollment_env(tenant, token["token"], state_dir)

    agent = start_agent(tmp_path, env)
    try:
        record = wait_for(lambda: online(tenant), what="the agent to come online")
        assert record["resources"]["memory_total_bytes"] > 0
        state_file = state_dir / "agent.json"
        assert stat.S_IMODE(state_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
        assert json.loads(state_file.read_text())["agent_id"] == record["id"]
        assert token["token"] not in agent.output()
        # Its settings were read by a helper process: the daemon holds no pydantic (9 MiB).
        maps = Path(f"/proc/{agent.process.pid}/maps").read_text()
        assert "pydantic_core" not in maps
        assert "cryptography" in maps  # what it does load shows there (the check can see)
    finally:
        assert agent.stop() == 0, agent.output()
    first_heartbeat = record["last_heartbeat_at"]

    # The token's second use is refused...
    second = httpx.post(
        f"{tenant.env_url}/agents",
        headers={"Authorization": f"Bearer {token['token']}"},
        json={"name": "intruder"},
    )
    assert second.status_code == 401

    # ...and a restart with the token still configured does not try it again.
    restarted = start_agent(tmp_path, env, name="agent-restarted")
    try:
        wait_for(
            lambda: (a := online(tenant)) and a["last_heartbeat_at"] != first_heartbeat,
            what="a heartbeat after the restart",
        )
        assert len(tenant.agents()) == 1
        assert tenant.token_uses(token["id"]) == 1
        assert "enrolled as" not in restarted.output()
        status = agent_cli("status", "--json", env={"BYTEOR_STATE_DIR": str(state_dir)})
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        assert shown["agent_id"] == record["id"]
        assert shown["last_heartbeat_ok"] is True
    finally:
        assert restarted.stop() == 0, restarted.output()


def test_enroll_command_for_provisioning_scripts(tenant: Tenant, tmp_path: Path) -> None:
    token = tenant.enrollment_token(max_uses=1)
    env = enrollment_env(tenant, token["token"], tmp_path / "state")
    first = agent_cli("enroll", env=env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("enrolled: agent agt_")
    again = agent_cli("enroll", env=env)
    assert again.returncode == 0
    assert again.stdout.startswith("already enrolled: agent agt_")
    assert tenant.token_uses(token["id"]) == 1

    used_up = agent_cli("enroll", env=enrollment_env(tenant, token["token"], tmp_path / "other"))
    assert used_up.returncode == 1
    assert "401" in used_up.stderr or "used up" in used_up.stderr
    assert token["token"] not in used_up.stderr

    missing = agent_cli(
        "enroll",
        env={"BYTEOR_API_BASE_URL": tenant.server.url, "BYTEOR_STATE_DIR": str(tmp_path / "x")},
    )
    assert missing.returncode == 2
    assert "BYTEOR_ENROLLMENT_TOKEN" in missing.stderr
    no_url = agent_cli("enroll", env={"BYTEOR_STATE_DIR": str(tmp_path / "y")})
    assert no_url.returncode == 2
    assert "BYTEOR_API_BASE_URL" in no_url.stderr


def test_provisioned_credentials_skip_enrollment(tenant: Tenant, tmp_path: Path) -> None:
    token = tenant.enrollment_token(max_uses=1)
    enrolled = httpx.post(
        f"{tenant.env_url}/agents",
        headers={"Authorization": f"Bearer {token['token']}"},
        json={"name": "baked-image"},
    ).json()
    env = {
        "BYTEOR_API_BASE_URL": tenant.server.url,
        "BYTEOR_AGENT_ID": enrolled["agent_id"],
        "BYTEOR_AGENT_API_KEY": enrolled["api_key"],
        "BYTEOR_STATE_DIR": str(tmp_path / "state"),
        "BYTEOR_UPLOAD_INTERVAL_SECONDS": "1",
    }
    # an artifact waiting in the outbox from the first boot on
    outbox = tmp_path / "state" / "outbox"
    outbox.parent.mkdir(mode=0o700)
    outbox.mkdir(mode=0o700)
    (outbox / "boot.bin").write_bytes(b"first boot telemetry")
    agent = start_agent(tmp_path, env)
    try:
        record = wait_for(lambda: online(tenant), what="the provisioned agent to come online")
        assert record["name"] == "baked-image"
        assert enrolled["api_key"] not in agent.output()
        # never enrolled with a key, it registers its identity key, then its upload is accepted
        artifacts = wait_for(
            lambda: tenant.api("GET", f"{tenant.env_url}/artifacts")["items"],
            what="the provisioned agent's artifact",
        )
        assert [(a["filename"], a["agent_id"]) for a in artifacts] == [
            ("boot.bin", enrolled["agent_id"])
        ]
        agent_record = tenant.api("GET", f"{tenant.env_url}/agents/{enrolled['agent_id']}")
        assert agent_record["public_key"]
        state = json.loads((tmp_path / "state" / "agent.json").read_text())
        assert state["identity_registered"] is True
    finally:
        assert agent.stop() == 0, agent.output()


def test_backs_off_on_429_and_recovers_without_a_storm(tenant: Tenant, tmp_path: Path) -> None:
    proxy = ThrottlingProxy(upstream=tenant.server.url, retry_after=2, throttle_seconds=6.0)
    proxy.start()
    token = tenant.enrollment_token()
    agent = start_agent(tmp_path, enrollment_env(tenant, token["token"], tmp_path / "s", proxy.url))
    try:
        wait_for(lambda: online(tenant), timeout=40, what="recovery after the 429 phase")
    finally:
        assert agent.stop() == 0, agent.output()
        proxy.stop()
    throttled = [t for t, status in proxy.heartbeats if status == 429]
    accepted = [t for t, status in proxy.heartbeats if status == 200]
    assert throttled, "the proxy never throttled a heartbeat"
    assert accepted, "no heartbeat got through after the throttle window"
    # Retry-After: 2 over a 6 s window allows at most ~3 attempts (+1 for timing slack);
    # a client ignoring it at a 1 s interval would send 6 or more.
    assert len(throttled) <= 4, proxy.heartbeats
    gaps = [b - a for a, b in itertools.pairwise(throttled)]
    assert all(gap >= 1.9 for gap in gaps), gaps
