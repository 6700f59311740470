"""Operating a real server: JSON logs with request ids, no secrets in any log, draining on SIGTERM."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from pathlib import Path

import httpx

from tests.e2e.conftest import clean_env, start_server
from tests.e2e.fleet import FAST_AGENT_SERVER_ENV, bootstrap_tenant, start_agent, wait_for


def test_logs_are_json_with_request_ids_and_never_hold_a_secret(tmp_path: Path) -> None:
    server = start_server(
        tmp_path, clean_env(**FAST_AGENT_SERVER_ENV, BYTEOR_CLOUD_LOG_LEVEL="debug")
    )
    agent = None
    try:
        tenant = bootstrap_tenant(server)
        secrets = [tenant.token]
        secrets.append(
            tenant.api("POST", f"{server.url}/api/v1/tokens", json={"name": "laptop"})["token"]
        )
        robot = tenant.api(
            "POST",
            f"{server.url}/api/v1/orgs/{tenant.org_id}/service-accounts",
            json={"name": "ci", "role": "viewer"},
        )
        secrets.append(robot["token"])
        enrollment = tenant.enrollment_token(max_uses=2)
        secrets.append(enrollment["token"])
        agent = start_agent(
            tmp_path,
            {
                "BYTEOR_API_BASE_URL": server.url,
                "BYTEOR_ENROLLMENT_TOKEN": enrollment["token"],
                "BYTEOR_ORG_ID": tenant.org_id,
                "BYTEOR_PROJECT_ID": tenant.project_id,
                "BYTEOR_ENVIRONMENT_ID": tenant.env_id,
                "BYTEOR_STATE_DIR": str(tmp_path / "state"),
                "BYTEOR_HEARTBEAT_INTERVAL_SECONDS": "1",
                "BYTEOR_LOG_LEVEL": "debug",
            },
        )
        wait_for(
            lambda: any(a["status"] == "online" for a in tenant.agents()), what="the agent online"
        )
        secrets.append(json.loads((tmp_path / "state" / "agent.json").read_text())["api_key"])
        enrolled = httpx.post(
            f"{tenant.env_url}/agents",
            headers={"Authorization": f"Bearer {enrollment['token']}"},
            json={"name": "second"},
        ).json()
        secrets.append(enrolled["api_key"])
        for secret in secrets:  # failed authentications with each secret's neighbours
            httpx.get(f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {secret}x"})
        traced = httpx.get(
            f"{server.url}/api/v1/me", headers=tenant.headers | {"X-Request-ID": "trace-me-42"}
        )
        assert traced.headers["x-request-id"] == "trace-me-42"
    finally:
        if agent is not None:
            agent.stop()
        server.stop()

    lines = [
        json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")
    ]
    assert lines, server.log.read_text()[:2000]
    access = [line for line in lines if line["logger"] == "byteor.controlplane.access"]
    assert any(line.get("request_id") == "trace-me-42" and line["status"] == 200 for line in access)
    assert all({"ts", "level", "logger", "msg"} <= line.keys() for line in lines)
    everything = server.log.read_text() + (agent.output() if agent else "")
    for secret in secrets:
        assert secret not in everything
        assert secret + "x" not in everything


def test_sigterm_drains_then_finishes_in_flight_requests(tmp_path: Path) -> None:
    server = start_server(tmp_path, clean_env(BYTEOR_CLOUD_DRAIN_SECONDS="2"))
    tenant = bootstrap_tenant(server)
    token = tenant.enrollment_token()["token"]
    agent = httpx.post(
        f"{tenant.env_url}/agents",
        headers={"Authorization": f"Bearer {token}"},
        json={"name": "poller"},
    ).json()
    headers = {"Authorization": f"Bearer {agent['api_key']}"}
    url = f"{server.url}/api/v1/agents/{agent['agent_id']}/deployment"
    etag = httpx.get(url, headers=headers).headers["etag"]
    results: list[int] = []

    def long_poll() -> None:
        response = httpx.get(
            url, headers=headers | {"If-None-Match": etag}, params={"wait": 3}, timeout=20
        )
        results.append(response.status_code)

    poller = threading.Thread(target=long_poll)
    poller.start()
    time.sleep(0.3)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 503
    assert "draining" in ready.json()["detail"]
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    poller.join(timeout=20)
    assert results == [304]
    assert server.process.wait(timeout=30) == 0


def _closed_by_server(connection: socket.socket, within: float) -> bool:
    """Whether the server closes the idle connection within ``within`` seconds (what is left of
    a reply is read and dropped)."""
    deadline = time.monotonic() + within
    try:
        while (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            if connection.recv(4096) == b"":
                return True
    except TimeoutError:
        pass
    return False


def test_idle_keep_alive_connections_stay_open_as_configured(tmp_path: Path) -> None:
    """Agents keep their connections between long-polls; the server holds an idle one for the
    configured time (default 75 s), not uvicorn's 5 s (a fleet busy activating would then
    reconnect all at once)."""
    server = start_server(tmp_path, clean_env(BYTEOR_CLOUD_HTTP_KEEP_ALIVE_SECONDS="2"))
    try:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as connection:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = b""
            while b"\r\n\r\n" not in reply:
                reply += connection.recv(4096)
            assert reply.startswith(b"HTTP/1.1 200")
            assert not _closed_by_server(connection, 1)  # still open after 1 s idle
            assert _closed_by_server(connection, 2.5)  # closed after 2 s (uvicorn's own: 5 s)
    finally:
        server.stop()
