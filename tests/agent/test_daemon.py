"""The daemon's decisions, with the control plane replaced by respx (the HTTP client is real)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import respx

from agent.client import ControlPlaneClient
from agent.daemon import UNAUTHORIZED_RECHECK_SECONDS, Agent
from agent.settings import AgentSettings
from agent.state import AgentState, load_state, save_state
from agent.status import read_status
from agent.systemd import SystemdNotifier
from shared.signing import Envelope, KeySet, new_signing_key, public_key_of, sign_keyset

pytestmark = pytest.mark.anyio

BASE = "http://cp.test"
AGENT = "agt_01TEST"
ORG = "org_test"


class RecordingNotifier(SystemdNotifier):
    def __init__(self) -> None:
        super().__init__(environ={})
        self.messages: list[str] = []

    def _send(self, message: str) -> None:
        self.messages.append(message)


def keyset(version: int, signers: list[tuple[str, Any]], keys: list[tuple[str, Any]]) -> Envelope:
    document = KeySet(
        org_id=ORG,
        version=version,
        keys=[public_key_of(kid, key) for kid, key in keys],
        issued_at=int(time.time()),
    )
    return sign_keyset(document, signers)


@pytest.fixture
def pinned_key() -> tuple[str, Any]:
    return new_signing_key()


@pytest.fixture
async def agent(tmp_path: Path, pinned_key: tuple[str, Any]) -> AsyncIterator[Agent]:
    settings = AgentSettings(api_base_url=BASE, state_dir=tmp_path, max_retry_attempts=1).config()
    state = AgentState(
        agent_id=AGENT,
        api_key="byteor_agk_old",
        org_id=ORG,
        project_id="prj_test",
        environment_id="env_test",
        name="test",
        keyset=keyset(1, [pinned_key], [pinned_key]),
        keyset_version=1,
        enrolled_at=datetime.now(UTC),
    )
    save_state(tmp_path, state)

    async def no_sleep(_seconds: float) -> None:
        return None

    async with ControlPlaneClient(settings, sleep=no_sleep) as client:
        daemon = Agent(settings, client, RecordingNotifier())
        daemon.state = state
        client.set_credentials(AGENT, state.api_key)
        yield daemon


def auth_of(request: httpx.Request) -> str:
    return request.headers["authorization"].removeprefix("Bearer ")


@respx.mock(base_url=BASE)
async def test_rotated_key_is_persisted_used_and_confirmed(
    respx_mock: respx.MockRouter, agent: Agent
) -> None:
    route = respx_mock.post(f"/api/v1/agents/{AGENT}/heartbeat")
    route.side_effect = [
        httpx.Response(200, json={"next_interval_seconds": 5, "rotated_api_key": "byteor_agk_new"}),
        httpx.Response(200, json={"next_interval_seconds": 5}),
    ]
    await agent.send_heartbeat()
    stored = load_state(agent.settings.state_dir)
    assert stored is not None
    assert (stored.api_key, stored.pending_api_key) == ("byteor_agk_old", "byteor_agk_new")
    await agent.send_heartbeat()
    assert [auth_of(call.request) for call in route.calls] == ["byteor_agk_old", "byteor_agk_new"]
    stored = load_state(agent.settings.state_dir)
    assert stored is not None
    assert (stored.api_key, stored.pending_api_key) == ("byteor_agk_new", None)
    assert agent.interval == 5


@respx.mock(base_url=BASE)
async def test_refused_rotated_key_falls_back(respx_mock: respx.MockRouter, agent: Agent) -> None:
    route = respx_mock.post(f"/api/v1/agents/{AGENT}/heartbeat")
    route.side_effect = [
        httpx.Response(200, json={"rotated_api_key": "byteor_agk_new"}),
        httpx.Response(401, json={"status": 401, "detail": "unknown key"}),
        httpx.Response(200, json={}),
    ]
    for _ in range(3):
        await agent.send_heartbeat()
    assert [auth_of(c.request) for c in route.calls] == [
        "byteor_agk_old",
        "byteor_agk_new",
        "byteor_agk_old",
    ]


@respx.mock(base_url=BASE)
async def test_keyset_update_signed_by_pinned_key_is_pinned(
    respx_mock: respx.MockRouter, agent: Agent, pinned_key: tuple[str, Any]
) -> None:
    new_key = new_signing_key()
    update = keyset(2, [pinned_key, new_key], [pinned_key, new_key])
    respx_mock.get(f"/api/v1/agents/{AGENT}/signing-key").respond(
        200, content=msgspec.json.encode(update)
    )
    await agent.refresh_keyset()
    stored = load_state(agent.settings.state_dir)
    assert stored is not None
    assert stored.keyset_version == 2


@respx.mock(base_url=BASE)
async def test_keyset_update_signed_only_by_unknown_key_is_refused(
    respx_mock: respx.MockRouter, agent: Agent, caplog: pytest.LogCaptureFixture
) -> None:
    rogue = new_signing_key()
    update = keyset(2, [rogue], [rogue])
    respx_mock.get(f"/api/v1/agents/{AGENT}/signing-key").respond(
        200, content=msgspec.json.encode(update)
    )
    await agent.refresh_keyset()
    stored = load_state(agent.settings.state_dir)
    assert stored is not None
    assert stored.keyset_version == 1
    assert "refusing the signing key set" in caplog.text
    assert "unknown_kid" in caplog.text


@respx.mock(base_url=BASE)
async def test_heartbeat_announcing_a_new_keyset_triggers_refresh(
    respx_mock: respx.MockRouter, agent: Agent, pinned_key: tuple[str, Any]
) -> None:
    respx_mock.post(f"/api/v1/agents/{AGENT}/heartbeat").respond(200, json={"keyset_version": 2})
    keys = respx_mock.get(f"/api/v1/agents/{AGENT}/signing-key").respond(
        200, content=msgspec.json.encode(keyset(2, [pinned_key], [pinned_key]))
    )
    await agent.send_heartbeat()
    assert keys.called
    assert agent.state is not None
    assert agent.state.keyset_version == 2


@respx.mock(base_url=BASE)
async def test_401_degrades_slows_down_and_still_reports_ready(
    respx_mock: respx.MockRouter, agent: Agent
) -> None:
    respx_mock.post(f"/api/v1/agents/{AGENT}/heartbeat").respond(
        401, json={"status": 401, "detail": "The agent key has been revoked"}
    )
    await agent.send_heartbeat()
    assert agent.interval == UNAUTHORIZED_RECHECK_SECONDS
    status = read_status(agent.settings.state_dir)
    assert status is not None
    assert status.state == "degraded"
    assert status.last_heartbeat_ok is False
    assert "revoked" in (status.last_error or "")
    notifier = agent.notifier
    assert isinstance(notifier, RecordingNotifier)
    assert notifier.messages[0].startswith("READY=1")


@respx.mock(base_url=BASE)
async def test_unreachable_control_plane_is_offline_not_fatal(
    respx_mock: respx.MockRouter, agent: Agent
) -> None:
    respx_mock.post(f"/api/v1/agents/{AGENT}/heartbeat").mock(
        side_effect=httpx.ConnectError("refused")
    )
    await agent.send_heartbeat()
    status = read_status(agent.settings.state_dir)
    assert status is not None
    assert status.state == "offline"
    assert isinstance(agent.notifier, RecordingNotifier)
    assert agent.notifier.ready_sent


async def test_heartbeat_sequence_survives_restart_ordering(agent: Agent) -> None:
    first = agent._next_sequence()
    restarted = Agent(agent.settings, agent.client, RecordingNotifier())
    assert restarted._next_sequence() >= first
    assert agent._next_sequence() > first


def test_notifier_targets_abstract_socket_and_watchdog() -> None:
    notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": "@/run/x", "WATCHDOG_USEC": "60000000"})
    assert notifier.enabled
    assert notifier.watchdog_interval == 30.0
    silent = SystemdNotifier(environ={})
    assert not silent.enabled
    silent.ready("no-op")  # must not raise outside systemd
    assert json.dumps(silent.watchdog_interval) == "null"


def test_notifier_speaks_the_sd_notify_protocol(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(str(path))
        notifier = SystemdNotifier(environ={"NOTIFY_SOCKET": str(path)})
        notifier.ready("online")
        notifier.ready("twice")  # READY is sent once
        notifier.watchdog()
        messages = [listener.recv(1024).decode() for _ in range(2)]
    assert messages == ["READY=1\nSTATUS=online", "WATCHDOG=1"]
