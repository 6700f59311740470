"""Artifact uploads against a respx-mocked control plane (the HTTP client and the spool are real)."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import respx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.cli import main
from agent.client import ControlPlaneClient
from agent.config import AgentConfig
from agent.daemon import Agent
from agent.enrollment import ensure_enrolled
from agent.errors import RequestRejected, StateError
from agent.identity import identity_path, load_or_create_identity, public_key_b64
from agent.settings import AgentSettings
from agent.spool import Spool
from agent.state import AgentState, save_state
from agent.status import read_status
from agent.systemd import SystemdNotifier
from agent.uploads import Uploader, open_spool, outbox_dir
from shared.agents import EnrollRequest
from shared.artifacts import ArtifactMetadata, verify_metadata
from tests.agent.support import ORG_ID, signed_keyset

pytestmark = pytest.mark.anyio

BASE = "http://cp.test"
AGENT_ID = "agt_up1"
KEY = "byteor_ak_SECRET_upload_key"
UPLOAD = f"/api/v1/agents/{AGENT_ID}/artifacts"


def receipt(status: int = 201, artifact_id: str = "art_1") -> httpx.Response:
    body = {"artifact_id": artifact_id, "status": "stored", "duplicate": status == 200}
    return httpx.Response(status, json=body)


def parts(request: httpx.Request) -> list[tuple[str, dict[str, str], bytes]]:
    """The multipart parts of ``request`` in order: (name, headers, body)."""
    content_type = request.headers["content-type"]
    assert content_type.startswith("multipart/form-data; boundary=")
    boundary = content_type.split("boundary=", 1)[1].encode()
    body = request.content
    assert body.endswith(b"--" + boundary + b"--\r\n")
    found = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        head, _, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode().split("\r\n"):
            key, _, value = line.partition(": ")
            headers[key.lower()] = value
        name = headers["content-disposition"].split('name="', 1)[1].split('"', 1)[0]
        found.append((name, headers, data.removesuffix(b"\r\n")))
    return found


def sent_metadata(request: httpx.Request) -> ArtifactMetadata:
    [(name, headers, data), *_] = parts(request)
    assert name == "metadata"
    assert headers["content-type"] == "application/json"
    return msgspec.json.decode(data, type=ArtifactMetadata)


def agent_state(**extra: Any) -> AgentState:
    return AgentState(
        agent_id=AGENT_ID,
        api_key=KEY,
        org_id=ORG_ID,
        project_id="prj_1",
        environment_id="env_1",
        name="web-1",
        keyset=signed_keyset(),
        keyset_version=1,
        enrolled_at=datetime.now(UTC),
        **extra,
    )


@dataclass
class Harness:
    settings: AgentConfig
    client: ControlPlaneClient
    router: respx.Router
    spool: Spool
    identity: Ed25519PrivateKey
    uploader: Uploader
    state: AgentState

    @property
    def public_key(self) -> str:
        return public_key_b64(self.identity)


@pytest.fixture
async def up(tmp_path: Path) -> AsyncIterator[Harness]:
    router = respx.Router(base_url=BASE, assert_all_called=False)
    settings = AgentSettings(api_base_url=BASE, state_dir=tmp_path, max_retry_attempts=2).config()

    async def no_sleep(_seconds: float) -> None:
        return None

    transport = httpx.MockTransport(router.handler)
    state = agent_state(
        active_deployment_id="dep_1", active_spec_hash="sha256:abc", identity_registered=True
    )
    async with ControlPlaneClient(settings, transport=transport, sleep=no_sleep) as client:
        client.set_credentials(AGENT_ID, KEY)
        spool = open_spool(tmp_path, settings.spool_max_bytes, settings.spool_max_files)
        identity = load_or_create_identity(tmp_path)
        uploader = Uploader(settings, client, spool, identity, lambda: state)
        yield Harness(settings, client, router, spool, identity, uploader, state)


async def test_upload_sends_signed_metadata_before_the_file(up: Harness) -> None:
    entry = up.spool.add(
        b"incident bytes", "incident", deployment_id="dep_1", spec_hash="h1", filename="c.tgz"
    )
    route = up.router.post(UPLOAD).mock(return_value=receipt(201))

    assert await up.uploader.upload_pending() == 1

    request = route.calls.last.request
    assert request.headers["authorization"] == f"Bearer {KEY}"
    [(first, _, _), (second, file_headers, data)] = parts(request)
    assert (first, second) == ("metadata", "file")
    assert file_headers["content-type"] == "application/octet-stream"
    assert 'filename="c.tgz"' in file_headers["content-disposition"]
    assert data == b"incident bytes"
    metadata = sent_metadata(request)
    assert verify_metadata(metadata, up.public_key)
    assert metadata.agent_id == AGENT_ID
    assert (metadata.kind, metadata.sha256, metadata.size) == ("incident", entry.sha256, 14)
    assert metadata.idempotency_key == entry.idempotency_key
    assert (metadata.deployment_id, metadata.spec_hash) == ("dep_1", "h1")
    tampered = msgspec.structs.replace(metadata, size=15)
    assert not verify_metadata(tampered, up.public_key)
    assert up.spool.entries() == []


async def test_client_upload_reports_duplicates(up: Harness, tmp_path: Path) -> None:
    entry = up.spool.add(b"again", "telemetry")
    up.router.post(UPLOAD).mock(side_effect=[receipt(201), receipt(200)])
    metadata = up.uploader.sign(entry, AGENT_ID)
    data = up.spool.data_path(entry.entry_id)
    first = await up.client.upload_artifact(metadata, data)
    second = await up.client.upload_artifact(metadata, data)
    assert (first[0].artifact_id, first[1]) == ("art_1", False)
    assert second[1] is True


async def test_duplicate_answer_also_deletes_the_entry(up: Harness) -> None:
    up.spool.add(b"seen before", "telemetry")
    up.router.post(UPLOAD).mock(return_value=receipt(200))
    assert await up.uploader.upload_pending() == 1
    assert up.spool.entries() == []


async def test_503_keeps_the_entry_and_the_next_round_reuses_the_idempotency_key(
    up: Harness,
) -> None:
    entry = up.spool.add(b"payload", "incident")
    later = up.spool.add(b"later", "telemetry")
    route = up.router.post(UPLOAD).mock(
        side_effect=[httpx.Response(503), httpx.Response(503), receipt(201), receipt(201)]
    )

    assert await up.uploader.upload_pending() == 0
    assert route.call_count == 2  # the client's own retries; then the round stops
    assert [e.entry_id for e in up.spool.entries()] == [entry.entry_id, later.entry_id]
    assert up.spool.entries()[0].attempts == 1

    assert await up.uploader.upload_pending() == 2
    assert up.spool.entries() == []
    sent = [sent_metadata(call.request) for call in route.calls]
    assert [m.idempotency_key for m in sent[:3]] == [entry.idempotency_key] * 3
    assert sent[3].idempotency_key == later.idempotency_key
    assert all(verify_metadata(m, up.public_key) for m in sent)


@pytest.mark.parametrize("status", [400, 413])
async def test_permanent_rejection_moves_the_entry_aside_and_goes_on(
    up: Harness, status: int
) -> None:
    bad = up.spool.add(b"refused", "incident")
    good = up.spool.add(b"fine", "telemetry")
    problem = {"status": status, "detail": "no thanks"}
    route = up.router.post(UPLOAD).mock(
        side_effect=[httpx.Response(status, json=problem), receipt(201)]
    )
    assert await up.uploader.upload_pending() == 1
    assert route.call_count == 2  # not retried
    assert sent_metadata(route.calls[1].request).idempotency_key == good.idempotency_key
    assert up.spool.entries() == []
    assert (up.spool.rejected_dir / f"{bad.entry_id}.data").read_bytes() == b"refused"
    note = msgspec.json.decode((up.spool.rejected_dir / f"{bad.entry_id}.json").read_bytes())
    assert str(status) in note["rejected_reason"]
    assert "no thanks" in note["rejected_reason"]


async def test_client_raises_request_rejected_for_413(up: Harness) -> None:
    entry = up.spool.add(b"x", "incident")
    up.router.post(UPLOAD).mock(return_value=httpx.Response(413))
    with pytest.raises(RequestRejected) as caught:
        await up.client.upload_artifact(
            up.uploader.sign(entry, AGENT_ID), up.spool.data_path(entry.entry_id)
        )
    assert caught.value.status == 413


async def test_unauthorized_keeps_the_entry(up: Harness) -> None:
    up.spool.add(b"x", "incident")
    up.router.post(UPLOAD).mock(return_value=httpx.Response(401))
    assert await up.uploader.upload_pending() == 0
    assert len(up.spool.entries()) == 1
    assert not up.spool.rejected_dir.exists()


async def test_429_waits_for_retry_after(tmp_path: Path) -> None:
    router = respx.Router(base_url=BASE)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    settings = AgentSettings(api_base_url=BASE, state_dir=tmp_path).config()
    route = router.post(UPLOAD).mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "9"}), receipt(201)]
    )
    spool = open_spool(tmp_path, 1024, 10)
    entry = spool.add(b"x", "telemetry")
    identity = load_or_create_identity(tmp_path)
    state = agent_state(identity_registered=True)
    transport = httpx.MockTransport(router.handler)
    async with ControlPlaneClient(settings, transport=transport, sleep=sleep) as client:
        client.set_credentials(AGENT_ID, KEY)
        uploader = Uploader(settings, client, spool, identity, lambda: state)
        assert await uploader.upload_pending() == 1
    assert route.call_count == 2
    assert sleeps[0] >= 9
    assert spool.entries() == []
    assert sent_metadata(route.calls[1].request).idempotency_key == entry.idempotency_key


async def test_outbox_files_are_spooled_with_the_active_deployment_and_uploaded(
    up: Harness,
) -> None:
    outbox = outbox_dir(up.settings.state_dir)
    outbox.mkdir()
    dropped = outbox / "boom.incident.tar.gz"
    dropped.write_bytes(b"tarball")
    old = time.time() - 30
    os.utime(dropped, (old, old))
    route = up.router.post(UPLOAD).mock(return_value=receipt(201))
    assert await up.uploader.upload_pending() == 1
    metadata = sent_metadata(route.calls.last.request)
    assert (metadata.kind, metadata.filename) == ("incident", "boom.incident.tar.gz")
    assert (metadata.deployment_id, metadata.spec_hash) == ("dep_1", "sha256:abc")
    assert not dropped.exists()


async def test_enrollment_creates_the_identity_first_and_sends_its_public_key(
    tmp_path: Path,
) -> None:
    router = respx.Router(base_url=BASE)
    body = {
        "agent_id": "agt_new",
        "api_key": "byteor_ak_new",
        "name": "web-1",
        "org_id": ORG_ID,
        "project_id": "prj_1",
        "environment_id": "env_1",
        "scopes": ["agent:artifact_upload"],
        "signing_keys": msgspec.to_builtins(signed_keyset()),
    }
    route = router.post(f"/api/v1/orgs/{ORG_ID}/projects/prj_1/environments/env_1/agents").mock(
        return_value=httpx.Response(201, json=body)
    )
    settings = AgentSettings(
        api_base_url=BASE,
        state_dir=tmp_path / "state",
        enrollment_token="byteor_et_token",
        org_id=ORG_ID,
        project_id="prj_1",
        environment_id="env_1",
    ).config()
    transport = httpx.MockTransport(router.handler)
    async with ControlPlaneClient(settings, transport=transport) as client:
        state, enrolled = await ensure_enrolled(settings, client)
    assert enrolled
    assert state.agent_id == "agt_new"
    key_file = identity_path(settings.state_dir)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(key_file.read_bytes()) == 32
    sent = msgspec.json.decode(route.calls.last.request.content, type=EnrollRequest)
    identity = load_or_create_identity(settings.state_dir)  # the same key, loaded again
    assert sent.public_key == public_key_b64(identity)
    assert sent.public_key is not None
    assert len(sent.public_key) == 43


def test_identity_is_stable_and_a_corrupt_key_is_an_error(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path)
    again = load_or_create_identity(tmp_path)
    assert public_key_b64(first) == public_key_b64(again)
    identity_path(tmp_path).write_bytes(b"short")
    with pytest.raises(StateError, match="corrupt"):
        load_or_create_identity(tmp_path)


class QuietNotifier(SystemdNotifier):
    def __init__(self) -> None:
        super().__init__(environ={})

    def _send(self, message: str) -> None:
        return None


async def test_daemon_reports_spool_size_and_drops_in_status(up: Harness) -> None:
    settings = AgentSettings(
        api_base_url=BASE,
        state_dir=up.settings.state_dir,
        max_retry_attempts=1,
        spool_max_files=2,
    ).config()
    save_state(settings.state_dir, up.state)
    daemon = Agent(settings, up.client, QuietNotifier())
    daemon.state = up.state
    for payload in (b"a", b"bb", b"ccc"):
        daemon.spool.add(payload, "telemetry")  # the first is dropped (max 2 files)
    up.router.post(f"/api/v1/agents/{AGENT_ID}/heartbeat").mock(
        return_value=httpx.Response(200, json={"next_interval_seconds": 30})
    )
    await daemon.send_heartbeat()
    status = read_status(settings.state_dir)
    assert status is not None
    assert (status.spool_files, status.spool_bytes) == (2, 5)
    assert status.dropped_artifacts == {"telemetry": 1}

    daemon.uploader = Uploader(settings, up.client, daemon.spool, up.identity, lambda: up.state)
    up.router.post(UPLOAD).mock(return_value=receipt(201))
    await daemon.upload_artifacts()
    status = read_status(settings.state_dir)
    assert status is not None
    assert (status.spool_files, status.spool_bytes) == (0, 0)


def test_cli_upload_spools_a_copy_and_prints_the_entry_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BYTEOR_STATE_DIR", str(tmp_path / "state"))
    source = tmp_path / "core.tar.gz"
    source.write_bytes(b"core dump")
    assert main(["upload", str(source), "--kind", "incident"]) == 0
    entry_id = capsys.readouterr().out.strip()
    [entry] = open_spool(tmp_path / "state", 1024, 10).entries()
    assert entry.entry_id == entry_id
    assert entry.kind == "incident"
    assert source.exists()

    assert main(["upload", str(tmp_path / "missing"), "--kind", "incident"]) == 2
    with pytest.raises(SystemExit) as exited:
        main(["upload", str(source), "--kind", "logs"])
    assert exited.value.code == 2


IDENTITY = f"/api/v1/agents/{AGENT_ID}/identity-key"


async def test_a_provisioned_agent_registers_its_identity_before_the_first_upload(
    up: Harness,
) -> None:
    up.state.identity_registered = False  # pre-provisioned credentials: never enrolled
    recorded: list[bool] = []
    up.uploader._on_identity_registered = lambda: recorded.append(True)
    up.spool.add(b"first", "telemetry")
    register = up.router.put(IDENTITY).mock(
        return_value=httpx.Response(200, json={"public_key": up.public_key})
    )
    upload = up.router.post(UPLOAD).mock(return_value=receipt(201))
    assert await up.uploader.upload_pending() == 1
    assert register.call_count == 1
    assert msgspec.json.decode(register.calls.last.request.content) == {"public_key": up.public_key}
    assert register.calls.last.request.headers["authorization"] == f"Bearer {KEY}"
    assert upload.call_count == 1
    assert recorded == [True]


async def test_nothing_is_registered_while_the_spool_is_empty(up: Harness) -> None:
    up.state.identity_registered = False
    register = up.router.put(IDENTITY).mock(return_value=httpx.Response(200))
    assert await up.uploader.upload_pending() == 0
    assert register.call_count == 0


async def test_a_refused_identity_keeps_everything_spooled(
    up: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    up.state.identity_registered = False
    entry = up.spool.add(b"kept", "incident")
    register = up.router.put(IDENTITY).mock(
        return_value=httpx.Response(
            409,
            json={
                "type": "urn:byteor:problem:conflict",
                "title": "Conflict",
                "status": 409,
                "detail": "This agent already registered another identity key",
            },
            headers={"content-type": "application/problem+json"},
        )
    )
    upload = up.router.post(UPLOAD).mock(return_value=receipt(201))
    with caplog.at_level("ERROR", logger="byteor.agent"):
        assert await up.uploader.upload_pending() == 0
        assert await up.uploader.upload_pending() == 0
    assert register.call_count == 2
    assert upload.call_count == 0
    assert [e.entry_id for e in up.spool.entries()] == [entry.entry_id]
    refusals = [r for r in caplog.records if "another identity key" in r.getMessage()]
    assert len(refusals) == 1  # said once, retried quietly


async def test_an_unreachable_control_plane_leaves_registration_for_later(up: Harness) -> None:
    up.state.identity_registered = False
    up.spool.add(b"later", "telemetry")
    up.router.put(IDENTITY).mock(side_effect=httpx.ConnectError("down"))
    upload = up.router.post(UPLOAD).mock(return_value=receipt(201))
    assert await up.uploader.upload_pending() == 0
    assert upload.call_count == 0
    assert len(up.spool.entries()) == 1
