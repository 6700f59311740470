"""The agent's spool survives a dead control plane and kill -9: every artifact arrives exactly once."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.e2e.conftest import clean_env, free_port, start_server
from tests.e2e.fleet import FAST_AGENT_SERVER_ENV, bootstrap_tenant, start_agent, wait_for


def test_outbox_artifacts_survive_kill_9_and_arrive_once(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(**FAST_AGENT_SERVER_ENV)
    server = start_server(tmp_path, env, port=port)
    tenant = bootstrap_tenant(server)
    state_dir = tmp_path / "agent-state"
    agent_env = {
        "BYTEOR_API_BASE_URL": server.url,
        "BYTEOR_ENROLLMENT_TOKEN": tenant.enrollment_token()["token"],
        "BYTEOR_ORG_ID": tenant.org_id,
        "BYTEOR_PROJECT_ID": tenant.project_id,
        "BYTEOR_ENVIRONMENT_ID": tenant.env_id,
        "BYTEOR_STATE_DIR": str(state_dir),
        "BYTEOR_HEARTBEAT_INTERVAL_SECONDS": "1",
        "BYTEOR_UPLOAD_INTERVAL_SECONDS": "1",
    }
    agent = start_agent(tmp_path, agent_env, name="agent-1")
    wait_for(lambda: any(a["status"] == "online" for a in tenant.agents()), what="the agent online")
    assert agent.stop() == 0
    server.stop()

    outbox = state_dir / "outbox"
    outbox.mkdir(exist_ok=True)
    payloads = {f"sample-{i}.bin": f"telemetry {i} ".encode() * 100 for i in range(5)}
    for name, data in payloads.items():
        (outbox / name).write_bytes(data)
    old = time.time() - 5
    for path in outbox.iterdir():
        import os

        os.utime(path, (old, old))

    # The control plane is down: the agent spools the outbox, then dies hard.
    crashed = start_agent(tmp_path, agent_env, name="agent-2")
    spool = state_dir / "spool"
    wait_for(
        lambda: spool.exists() and len(list(spool.glob("*.data"))) == len(payloads),
        what="the outbox moved into the spool",
    )
    assert list(outbox.iterdir()) == []
    crashed.process.send_signal(signal.SIGKILL)
    crashed.process.wait(timeout=10)

    # Restarted with the control plane still down, then killed again mid-retry.
    again = start_agent(tmp_path, agent_env, name="agent-3")
    time.sleep(2)
    again.process.send_signal(signal.SIGKILL)
    again.process.wait(timeout=10)
    assert len(list(spool.glob("*.data"))) == len(payloads)

    # The control plane comes back on the same address: everything arrives, exactly once.
    server = start_server(tmp_path, env, port=port)
    final = start_agent(tmp_path, agent_env, name="agent-4")
    try:
        artifacts = wait_for(
            lambda: (
                (items := tenant.api("GET", f"{tenant.env_url}/artifacts")["items"])
                and len(items) >= len(payloads)
                and items
            ),
            timeout=60,
            what="all artifacts uploaded",
        )
        wait_for(lambda: not list(spool.glob("*.data")), what="the spool drained")
        time.sleep(2)  # a duplicate upload, if any, would land now
        artifacts = tenant.api("GET", f"{tenant.env_url}/artifacts")["items"]
        assert sorted(a["filename"] for a in artifacts) == sorted(payloads)
        assert len({a["digest"] for a in artifacts}) == len(payloads)
        assert all(a["kind"] == "telemetry" for a in artifacts)
    finally:
        assert final.stop() == 0, final.output()
        server.stop()
