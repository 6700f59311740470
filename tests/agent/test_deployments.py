"""The deployment job and its client calls against respx (the HTTP client itself is real)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import pytest
import respx
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from agent.activation import JOURNAL_FILE, OUTCOME_FILE, Activator, Journal
from agent.client import ControlPlaneClient
from agent.config import AgentConfig
from agent.daemon import Agent
from agent.deployments import POLL_DELAY_SECONDS, DeploymentChecker
from agent.errors import BundleTooLarge
from agent.settings import AgentSettings
from agent.state import AgentState, load_state, save_state
from agent.status import read_status
from agent.systemd import SystemdNotifier
from shared.agents import Heartbeat
from shared.deployments import DeploymentReport
from shared.signing import Envelope
from tests.agent.test_activation import (
    AGENT,
    VALID,
    Bundle,
    Keys,
    hand_made_bundle,
    make_bundle,
    manifest,
    new_state,
    tar_member,
)

pytestmark = pytest.mark.anyio

BASE = "http://cp.test"
DEPLOYMENT = f"/api/v1/agents/{AGENT}/deployment"
WAIT = 25.0
HTTP_TIMEOUT = 10.0
MAX_BACKOFF = 8.0


class QuietNotifier(SystemdNotifier):
    def __init__(self) -> None:
        super().__init__(environ={})

    def _send(self, message: str) -> None:
        return None


@dataclass
class Cp:
    """A respx control plane, a real client, and one agent's files."""

    router: respx.Router
    client: ControlPlaneClient
    settings: AgentConfig
    keys: Keys
    state: AgentState
    root: Path

    def checker(self) -> DeploymentChecker:
        return DeploymentChecker(
            self.settings, self.client, Activator(self.settings), lambda: self.state
        )

    def serve(self, envelope: Envelope | None, etag: str = '"1"') -> respx.Route:
        body = {"manifest": None if envelope is None else msgspec.to_builtins(envelope)}
        return self.router.get(DEPLOYMENT).respond(200, json=body, headers={"ETag": etag})

    def serve_bundle(self, bundle: Bundle) -> respx.Route:
        path = f"/api/v1/agents/{AGENT}/bundles/{bundle.digest}"
        return self.router.get(path).respond(200, content=bundle.archive)

    def accept_reports(self) -> respx.Route:
        return self.router.post(DEPLOYMENT).respond(204)

    @property
    def current(self) -> Path:
        return self.settings.state_dir / "current"


def reports_of(route: respx.Route) -> list[DeploymentReport]:
    return [msgspec.json.decode(c.request.content, type=DeploymentReport) for c in route.calls]


@pytest.fixture
async def cp(tmp_path: Path) -> AsyncIterator[Cp]:
    router = respx.Router(base_url=BASE, assert_all_called=False)
    settings = AgentSettings(
        api_base_url=BASE,
        state_dir=tmp_path / "state",
        spec=tmp_path / "spec.kv",
        max_retry_attempts=1,
        max_backoff_seconds=MAX_BACKOFF,
        http_timeout_seconds=HTTP_TIMEOUT,
        deployment_wait_seconds=WAIT,
    ).config()
    keys = Keys.new()
    state = new_state(keys)
    save_state(settings.state_dir, state)

    async def no_sleep(_seconds: float) -> None:
        return None

    transport = httpx.MockTransport(router.handler)
    async with ControlPlaneClient(settings, transport=transport, sleep=no_sleep) as client:
        client.set_credentials(AGENT, state.api_key)
        yield Cp(router, client, settings, keys, state, tmp_path)


@pytest.fixture(scope="module")
def orders() -> Bundle:
    return make_bundle("orders")


# --- the client ----------------------------------------------------------------------------------


async def test_get_deployment_sends_wait_and_if_none_match(cp: Cp) -> None:
    route = cp.router.get(DEPLOYMENT)
    route.side_effect = [
        httpx.Response(200, json={"manifest": None, "sequence": 0}, headers={"ETag": '"e1"'}),
        httpx.Response(304),
    ]
    first = await cp.client.get_deployment(wait=WAIT)
    second = await cp.client.get_deployment(wait=WAIT, etag='"e1"')

    assert first[1] == '"e1"'
    assert first[0] is not None
    assert first[0].manifest is None
    assert second == (None, '"e1"')
    requests = [call.request for call in route.calls]
    assert [r.url.params["wait"] for r in requests] == ["25", "25"]
    assert "if-none-match" not in requests[0].headers
    assert requests[1].headers["If-None-Match"] == '"e1"'
    # The long-poll may take `wait` seconds: the HTTP timeout is longer by the usual timeout.
    assert requests[1].extensions["timeout"]["read"] == WAIT + HTTP_TIMEOUT


async def test_download_streams_to_the_file(cp: Cp, orders: Bundle) -> None:
    cp.serve_bundle(orders)
    destination = cp.root / "bundle.part"
    written = await cp.client.download_bundle(orders.digest, destination, len(orders.archive))
    assert written == len(orders.archive)
    assert destination.read_bytes() == orders.archive
    assert destination.stat().st_mode & 0o777 == 0o600


async def test_download_over_the_limit_is_aborted_and_deleted(cp: Cp, orders: Bundle) -> None:
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for index in range(1000):
            sent.append(index)
            yield b"\0" * 65536

    path = f"/api/v1/agents/{AGENT}/bundles/{orders.digest}"
    cp.router.get(path).mock(side_effect=lambda _request: httpx.Response(200, content=endless()))
    destination = cp.root / "bundle.part"
    with pytest.raises(BundleTooLarge):
        await cp.client.download_bundle(orders.digest, destination, 100_000)
    assert not destination.exists()
    assert len(sent) < 10  # aborted early, not read to the end


async def test_download_with_too_large_content_length_is_refused(cp: Cp, orders: Bundle) -> None:
    cp.serve_bundle(orders)
    destination = cp.root / "bundle.part"
    with pytest.raises(BundleTooLarge, match="Content-Length"):
        await cp.client.download_bundle(orders.digest, destination, len(orders.archive) - 1)
    assert not destination.exists()


# --- the checker ---------------------------------------------------------------------------------


async def test_not_modified_activates_nothing(cp: Cp) -> None:
    route = cp.router.get(DEPLOYMENT)
    route.side_effect = [
        httpx.Response(200, json={"manifest": None}, headers={"ETag": '"e1"'}),
        httpx.Response(304, headers={"ETag": '"e1"'}),
    ]
    reports = cp.accept_reports()
    checker = cp.checker()
    await checker.check_once()
    await checker.check_once()

    assert route.calls.last.request.headers["If-None-Match"] == '"e1"'
    assert not reports.called
    assert not cp.current.exists()
    assert POLL_DELAY_SECONDS <= checker.next_delay < POLL_DELAY_SECONDS + 1


async def test_manifest_is_reported_activating_then_active(cp: Cp, orders: Bundle) -> None:
    envelope = manifest(cp.keys, orders, 7)
    cp.serve(envelope)
    download = cp.serve_bundle(orders)
    reports = cp.accept_reports()
    checker = cp.checker()

    await checker.check_once()

    assert [(r.status, r.sequence, r.deployment_id) for r in reports_of(reports)] == [
        ("activating", 7, "dep_7"),
        ("active", 7, "dep_7"),
    ]
    final = reports_of(reports)[-1]
    assert (final.bundle_digest, final.spec_hash, final.reason) == (
        orders.digest,
        orders.spec_hash,
        None,
    )
    assert cp.state.active_bundle_digest == orders.digest
    assert cp.state.last_sequence == 7
    assert (cp.settings.spec).read_text() == orders.spec_kv
    assert not (cp.settings.state_dir / OUTCOME_FILE).exists()  # delivered
    assert checker.pending_report is None

    # A server that keeps answering with the same manifest changes nothing.
    await checker.check_once()
    assert reports.call_count == 2
    assert download.call_count == 1


async def test_refusal_is_reported_failed_with_its_reason(cp: Cp) -> None:
    bad = hand_made_bundle(VALID, extra=[tar_member("../x", b"evil")])
    cp.serve(manifest(cp.keys, bad, 3))
    cp.serve_bundle(bad)
    reports = cp.accept_reports()

    await cp.checker().check_once()

    sent = reports_of(reports)
    assert [(r.status, r.sequence) for r in sent] == [("activating", 3), ("failed", 3)]
    assert (sent[1].reason or "").startswith("unsafe_archive: member '../x' escapes the bundle")
    assert cp.state.last_sequence == 3
    assert cp.state.active_bundle_digest is None
    assert not cp.current.exists()


async def test_unverifiable_manifest_is_reported_once_and_not_applied(
    cp: Cp, orders: Bundle
) -> None:
    cp.serve(manifest(Keys.new(), orders, 4))
    download = cp.serve_bundle(orders)
    reports = cp.accept_reports()
    checker = cp.checker()

    await checker.check_once()
    await checker.check_once()

    sent = reports_of(reports)
    assert [(r.status, r.sequence) for r in sent] == [("failed", 4)]
    assert (sent[0].reason or "").startswith("unknown_kid: ")
    assert not download.called
    assert cp.state.last_sequence == 0


async def test_oversized_bundle_download_is_aborted_and_nothing_activates(
    cp: Cp, orders: Bundle
) -> None:
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        for index in range(1000):
            sent.append(index)
            yield b"\0" * 65536

    cp.serve(manifest(cp.keys, orders, 2))
    path = f"/api/v1/agents/{AGENT}/bundles/{orders.digest}"
    cp.router.get(path).mock(side_effect=lambda _request: httpx.Response(200, content=endless()))
    reports = cp.accept_reports()

    await cp.checker().check_once()

    assert len(sent) < 10
    downloads = cp.settings.state_dir / "downloads"
    assert not downloads.exists() or not any(downloads.iterdir())
    assert not cp.current.exists()
    assert not cp.settings.spec.exists()
    assert cp.state.active_bundle_digest is None
    assert [(r.status, (r.reason or "").split(":")[0]) for r in reports_of(reports)] == [
        ("activating", ""),
        ("failed", "size_mismatch"),
    ]


async def test_undelivered_outcome_is_retried_and_survives_a_restart(
    cp: Cp, orders: Bundle
) -> None:
    cp.serve(manifest(cp.keys, orders, 5))
    cp.serve_bundle(orders)
    reports = cp.router.post(DEPLOYMENT)
    reports.side_effect = [httpx.Response(204), httpx.Response(503)]
    checker = cp.checker()

    await checker.check_once()

    assert checker.pending_report is not None
    assert checker.pending_report.status == "active"
    assert (cp.settings.state_dir / OUTCOME_FILE).exists()
    assert checker.next_delay >= POLL_DELAY_SECONDS

    # The agent restarts: the new checker finds the outcome on disk and reports it first.
    reports.side_effect = None
    reports.return_value = httpx.Response(204)
    restarted = cp.checker()
    assert msgspec.to_builtins(restarted.pending_report) == msgspec.to_builtins(
        checker.pending_report
    )
    await restarted.check_once()
    delivered = reports_of(reports)[-1]
    assert (delivered.status, delivered.sequence) == ("active", 5)
    assert restarted.pending_report is None
    assert not (cp.settings.state_dir / OUTCOME_FILE).exists()


async def test_unreachable_control_plane_backs_off(cp: Cp) -> None:
    cp.router.get(DEPLOYMENT).mock(side_effect=httpx.ConnectError("refused"))
    checker = cp.checker()
    delays = []
    for _ in range(6):
        await checker.check_once()
        delays.append(checker.next_delay)
    assert all(POLL_DELAY_SECONDS <= d <= MAX_BACKOFF for d in delays)
    assert delays[-1] >= MAX_BACKOFF / 2
    assert not checker.busy


# --- the daemon ----------------------------------------------------------------------------------


@pytest.fixture
def agent(cp: Cp) -> Agent:
    daemon = Agent(cp.settings, cp.client, QuietNotifier())
    daemon.state = cp.state
    return daemon


async def test_heartbeat_carries_the_active_deployment(cp: Cp, agent: Agent) -> None:
    cp.state.active_deployment_id = "dep_9"
    cp.state.active_bundle_digest = "sha256:" + "a" * 64
    route = cp.router.post(f"/api/v1/agents/{AGENT}/heartbeat").respond(200, json={})
    await agent.send_heartbeat()
    body = msgspec.json.decode(route.calls.last.request.content, type=Heartbeat)
    assert (body.active_deployment_id, body.active_bundle_digest) == (
        "dep_9",
        "sha256:" + "a" * 64,
    )
    status = read_status(cp.settings.state_dir)
    assert status is not None
    assert status.active_deployment_id == "dep_9"


async def test_deployment_pending_runs_the_check_now(cp: Cp, agent: Agent) -> None:
    cp.router.post(f"/api/v1/agents/{AGENT}/heartbeat").respond(
        200, json={"deployment_pending": True}
    )
    scheduler = AsyncIOScheduler(timezone=UTC)
    later = datetime.now(UTC) + timedelta(hours=1)
    scheduler.add_job(
        agent.check_deployment, "interval", id="deployment", seconds=3600, next_run_time=later
    )
    scheduler.start(paused=True)
    agent._scheduler = scheduler
    try:
        await agent.send_heartbeat()
        job = scheduler.get_job("deployment")
        assert job is not None
        assert job.next_run_time <= datetime.now(UTC) + timedelta(seconds=1)
    finally:
        scheduler.shutdown(wait=False)


async def test_restart_recovers_and_reports_the_interrupted_deployment(
    cp: Cp, orders: Bundle
) -> None:
    activator = Activator(cp.settings)
    cp.router.get(f"/api/v1/agents/{AGENT}/bundles/{orders.digest}").respond(
        200, content=orders.archive
    )
    await activator.apply(manifest(cp.keys, orders, 1), cp.state, cp.client.download_bundle)
    activator.mark_reported(activator.unreported_outcome() or pytest.fail("no outcome"))
    # A crash left an activation of sequence 2 half done.
    journal = Journal(
        deployment_id="dep_2",
        sequence=2,
        action="deploy",
        target_digest="sha256:" + "b" * 64,
        target_spec_hash="sha256:" + "c" * 64,
        previous_deployment_id="dep_1",
        previous_digest=orders.digest,
        previous_spec_hash=orders.spec_hash,
        step="downloaded",
    )
    (cp.settings.state_dir / JOURNAL_FILE).write_bytes(msgspec.json.encode(journal))
    cp.router.post(f"/api/v1/agents/{AGENT}/heartbeat").respond(200, json={})
    cp.router.get(DEPLOYMENT).respond(304)
    reports = cp.accept_reports()

    daemon = Agent(cp.settings, cp.client, QuietNotifier())
    running = asyncio.ensure_future(daemon.run())
    try:
        for _ in range(100):
            if reports.called:
                break
            await asyncio.sleep(0.05)
    finally:
        await daemon.shutdown()
        await asyncio.wait_for(running, 5)

    [report] = reports_of(reports)
    assert (report.deployment_id, report.sequence, report.status) == ("dep_2", 2, "failed")
    assert (report.reason or "").startswith("interrupted: ")
    stored = load_state(cp.settings.state_dir)
    assert stored is not None
    assert (stored.last_sequence, stored.active_bundle_digest) == (2, orders.digest)
    assert not (cp.settings.state_dir / JOURNAL_FILE).exists()
    status = read_status(cp.settings.state_dir)
    assert status is not None
    assert status.active_bundle_digest == orders.digest


async def test_a_download_that_fails_transiently_fetches_the_manifest_again(
    cp: Cp, orders: Bundle
) -> None:
    """A half-done attempt must not leave the agent long-polling on that manifest's ETag."""
    envelope = manifest(cp.keys, orders, 9)
    route = cp.serve(envelope, etag='"seq-9"')
    download = cp.router.get(f"/api/v1/agents/{AGENT}/bundles/{orders.digest}")
    download.side_effect = [httpx.Response(503), httpx.Response(200, content=orders.archive)]
    reports = cp.accept_reports()
    checker = cp.checker()

    await checker.check_once()  # the download fails: nothing active yet
    assert cp.state.last_sequence == 0
    await checker.check_once()  # asks again without If-None-Match, gets it, activates

    assert "If-None-Match" not in route.calls.last.request.headers
    assert cp.state.active_bundle_digest == orders.digest
    assert [r.status for r in reports_of(reports)][-1] == "active"
