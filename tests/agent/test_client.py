"""ControlPlaneClient against a respx-mocked control plane: decoding, errors, retries, secrets."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import msgspec
import pytest
import respx

from agent.client import USER_AGENT, ControlPlaneClient
from agent.errors import (
    AgentError,
    Forbidden,
    InvalidResponse,
    NotFoundError,
    PermanentError,
    RequestRejected,
    TransientError,
    Unauthorized,
)
from agent.retry import MAX_RETRY_AFTER_SECONDS, parse_retry_after
from agent.settings import AgentSettings
from shared import __version__
from shared.agents import EnrollRequest, Heartbeat, HeartbeatResponse
from shared.signing import decode_keyset
from tests.agent.support import ORG_ID, signed_keyset

pytestmark = pytest.mark.anyio

BASE = "http://cp.test"
AGENT_ID = "agt_1"
KEY = "byteor_ak_SECRET_agent_key_0123456789"
TOKEN = "byteor_et_SECRET_enrollment_token_9876"
MAX_ATTEMPTS = 6
MAX_BACKOFF = 8.0
HEARTBEAT = f"/api/v1/agents/{AGENT_ID}/heartbeat"
ENROLL = f"/api/v1/orgs/{ORG_ID}/projects/prj_1/environments/env_1/agents"
PROBLEM = "application/problem+json"


def problem(status: int, detail: str, type_: str = "urn:byteor:problem:test") -> httpx.Response:
    body = {"type": type_, "title": "Problem", "status": status, "detail": detail}
    return httpx.Response(status, json=body, headers={"Content-Type": PROBLEM})


def ok_heartbeat(**extra: Any) -> httpx.Response:
    return httpx.Response(200, json={"next_interval_seconds": 15, "keyset_version": 2, **extra})


def enroll_response(api_key: str) -> httpx.Response:
    body = {
        "agent_id": "agt_2",
        "api_key": api_key,
        "name": "web-1",
        "org_id": ORG_ID,
        "project_id": "prj_1",
        "environment_id": "env_1",
        "scopes": ["agent:heartbeat"],
        "signing_keys": msgspec.to_builtins(signed_keyset()),
    }
    return httpx.Response(201, json=body)


@dataclass
class Harness:
    client: ControlPlaneClient
    router: respx.Router
    sleeps: list[float] = field(default_factory=list)


@pytest.fixture
async def cp() -> AsyncIterator[Harness]:
    router = respx.Router(base_url=BASE, assert_all_called=False)
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    settings = AgentSettings(
        api_base_url=BASE, max_retry_attempts=MAX_ATTEMPTS, max_backoff_seconds=MAX_BACKOFF
    ).config()
    transport = httpx.MockTransport(router.handler)
    async with ControlPlaneClient(settings, transport=transport, sleep=sleep) as client:
        client.set_credentials(AGENT_ID, KEY)
        yield Harness(client=client, router=router, sleeps=sleeps)


def assert_no_secrets(text: str) -> None:
    assert KEY not in text
    assert TOKEN not in text


async def test_heartbeat_decodes_response_and_sends_the_agent_key(cp: Harness) -> None:
    route = cp.router.post(HEARTBEAT).mock(
        return_value=ok_heartbeat(deployment_pending=True, server_time="2025-01-02T03:04:05Z")
    )
    response = await cp.client.heartbeat(Heartbeat(sequence=4, agent_version=__version__))

    assert response == HeartbeatResponse(
        next_interval_seconds=15,
        deployment_pending=True,
        keyset_version=2,
        server_time=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    request = route.calls.last.request
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["User-Agent"] == USER_AGENT == f"byteor-agent/{__version__}"
    assert request.headers["Content-Type"] == "application/json"
    assert msgspec.json.decode(request.content, type=Heartbeat).sequence == 4
    assert cp.sleeps == []


async def test_429_with_retry_after_seconds_waits_at_least_that_long(cp: Harness) -> None:
    route = cp.router.post(HEARTBEAT).mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": "7"}), ok_heartbeat()]
    )
    await cp.client.heartbeat(Heartbeat())
    assert route.call_count == 2
    assert len(cp.sleeps) == 1
    assert cp.sleeps[0] >= 7


async def test_429_with_http_date_retry_after(cp: Harness) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    route = cp.router.post(HEARTBEAT).mock(
        side_effect=[httpx.Response(429, headers={"Retry-After": when}), ok_heartbeat()]
    )
    await cp.client.heartbeat(Heartbeat())
    assert route.call_count == 2
    [slept] = cp.sleeps
    assert 27 <= slept <= 31


async def test_429_without_retry_after_backs_off_within_bounds(cp: Harness) -> None:
    route = cp.router.post(HEARTBEAT).mock(side_effect=[httpx.Response(429), ok_heartbeat()])
    await cp.client.heartbeat(Heartbeat())
    assert route.call_count == 2
    [slept] = cp.sleeps
    assert 0 < slept <= MAX_BACKOFF


async def test_429_storm_is_not_hammered(cp: Harness) -> None:
    storm = [httpx.Response(429, headers={"Retry-After": "2"}) for _ in range(5)]
    route = cp.router.post(HEARTBEAT).mock(side_effect=[*storm, ok_heartbeat()])
    await cp.client.heartbeat(Heartbeat())
    assert route.call_count == 6
    assert len(cp.sleeps) == 5
    assert all(slept >= 2 for slept in cp.sleeps)
    assert sum(cp.sleeps) >= 10


async def test_503_twice_then_success(cp: Harness) -> None:
    route = cp.router.post(HEARTBEAT).mock(
        side_effect=[problem(503, "db down"), httpx.Response(503), ok_heartbeat()]
    )
    response = await cp.client.heartbeat(Heartbeat())
    assert response.keyset_version == 2
    assert route.call_count == 3
    assert len(cp.sleeps) == 2
    assert all(0 <= slept <= MAX_BACKOFF for slept in cp.sleeps)


async def test_503_forever_gives_up_after_max_attempts(
    cp: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    route = cp.router.post(HEARTBEAT).mock(return_value=problem(503, "maintenance"))
    with pytest.raises(TransientError) as caught:
        await cp.client.heartbeat(Heartbeat())
    assert route.call_count == MAX_ATTEMPTS
    assert len(cp.sleeps) == MAX_ATTEMPTS - 1
    assert all(0 <= slept <= MAX_BACKOFF for slept in cp.sleeps)
    error = caught.value
    assert error.retryable
    assert error.status == 503
    assert error.detail == "maintenance"
    assert error.problem_type == "urn:byteor:problem:test"
    assert "retrying" in caplog.text
    assert_no_secrets(caplog.text)


async def test_401_is_not_retried_and_logged_once_without_the_key(
    cp: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    route = cp.router.post(HEARTBEAT).mock(return_value=problem(401, "agent key revoked"))
    with pytest.raises(Unauthorized) as caught:
        await cp.client.heartbeat(Heartbeat())
    assert route.call_count == 1
    assert cp.sleeps == []
    error = caught.value
    assert isinstance(error, PermanentError)
    assert not error.retryable
    assert (error.status, error.detail) == (401, "agent key revoked")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "agent key rejected (401): agent key revoked" in message
    assert "BYTEOR_AGENT_API_KEY" in message
    assert_no_secrets(caplog.text)
    assert_no_secrets(f"{error} {error!r} {cp.client!r}")


async def test_403_is_not_retried(cp: Harness, caplog: pytest.LogCaptureFixture) -> None:
    route = cp.router.get(f"/api/v1/agents/{AGENT_ID}/signing-key").mock(
        return_value=problem(403, "missing scope agent:signing_key")
    )
    with pytest.raises(Forbidden) as caught:
        await cp.client.signing_keys()
    assert route.call_count == 1
    assert cp.sleeps == []
    assert caught.value.detail == "missing scope agent:signing_key"
    assert "agent key lacks scope (403): missing scope agent:signing_key" in caplog.text
    assert_no_secrets(caplog.text)


async def test_404_is_not_retried(cp: Harness) -> None:
    route = cp.router.get(f"/api/v1/agents/{AGENT_ID}").mock(return_value=problem(404, "gone"))
    with pytest.raises(NotFoundError) as caught:
        await cp.client.get_self()
    assert route.call_count == 1
    assert caught.value.status == 404


async def test_other_4xx_is_rejected_with_the_problem(cp: Harness) -> None:
    route = cp.router.post(HEARTBEAT).mock(
        return_value=problem(422, "sequence must be >= 0", "urn:byteor:problem:validation")
    )
    with pytest.raises(RequestRejected) as caught:
        await cp.client.heartbeat(Heartbeat())
    assert route.call_count == 1
    error = caught.value
    assert (error.status, error.detail) == (422, "sequence must be >= 0")
    assert error.problem_type == "urn:byteor:problem:validation"
    assert "sequence must be >= 0" in str(error)


@pytest.mark.parametrize("failure", [httpx.ConnectError, httpx.ReadTimeout])
async def test_network_errors_are_retried(cp: Harness, failure: type[Exception]) -> None:
    route = cp.router.post(HEARTBEAT).mock(side_effect=[failure, failure, ok_heartbeat()])
    response = await cp.client.heartbeat(Heartbeat())
    assert response.next_interval_seconds == 15
    assert route.call_count == 3
    assert len(cp.sleeps) == 2


async def test_undecodable_success_is_invalid_response_and_not_retried(cp: Harness) -> None:
    route = cp.router.post(HEARTBEAT).mock(return_value=httpx.Response(200, text="<html>"))
    with pytest.raises(InvalidResponse):
        await cp.client.heartbeat(Heartbeat())
    assert route.call_count == 1


async def test_enroll_sends_the_token_and_agent_routes_send_the_key(cp: Harness) -> None:
    new_key = "byteor_ak_SECRET_fresh_key"
    enroll = cp.router.post(ENROLL).mock(return_value=enroll_response(new_key))
    response = await cp.client.enroll(
        TOKEN, ORG_ID, "prj_1", "env_1", EnrollRequest(name="web-1", hostname="web-1")
    )
    assert (response.agent_id, response.api_key) == ("agt_2", new_key)
    assert decode_keyset(response.signing_keys).org_id == ORG_ID
    sent = enroll.calls.last.request
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert KEY not in str(sent.headers.raw)
    assert msgspec.json.decode(sent.content, type=EnrollRequest).name == "web-1"

    cp.client.set_credentials(response.agent_id, response.api_key)
    heartbeat = cp.router.post("/api/v1/agents/agt_2/heartbeat").mock(return_value=ok_heartbeat())
    await cp.client.heartbeat(Heartbeat())
    sent = heartbeat.calls.last.request
    assert sent.headers["Authorization"] == f"Bearer {new_key}"
    assert TOKEN not in str(sent.headers.raw)
    assert TOKEN not in sent.content.decode()


async def test_rotated_key_is_used_from_the_next_call(cp: Harness) -> None:
    route = cp.router.post(HEARTBEAT).mock(return_value=ok_heartbeat())
    await cp.client.heartbeat(Heartbeat())
    cp.client.set_credentials(AGENT_ID, "byteor_ak_rotated")
    await cp.client.heartbeat(Heartbeat())
    keys = [call.request.headers["Authorization"] for call in route.calls]
    assert keys == [f"Bearer {KEY}", "Bearer byteor_ak_rotated"]


async def test_enroll_401_hints_at_the_token_without_leaking_it(
    cp: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    cp.router.post(ENROLL).mock(return_value=problem(401, f"token {TOKEN} was used up"))
    with pytest.raises(Unauthorized) as caught:
        await cp.client.enroll(TOKEN, ORG_ID, "prj_1", "env_1", EnrollRequest())
    assert "enrollment token rejected (401)" in caplog.text
    assert_no_secrets(caplog.text)
    assert_no_secrets(f"{caught.value} {caught.value.detail}")


async def test_enroll_is_not_repeated_once_the_server_may_have_acted(cp: Harness) -> None:
    route = cp.router.post(ENROLL).mock(return_value=httpx.Response(503))
    with pytest.raises(TransientError):
        await cp.client.enroll(TOKEN, ORG_ID, "prj_1", "env_1", EnrollRequest())
    assert route.call_count == 1


async def test_enroll_is_retried_when_the_request_never_arrived(cp: Harness) -> None:
    route = cp.router.post(ENROLL).mock(
        side_effect=[
            httpx.ConnectError,
            httpx.Response(429, headers={"Retry-After": "3"}),
            enroll_response("byteor_ak_SECRET_fresh_key"),
        ]
    )
    response = await cp.client.enroll(TOKEN, ORG_ID, "prj_1", "env_1", EnrollRequest())
    assert response.agent_id == "agt_2"
    assert route.call_count == 3
    assert len(cp.sleeps) == 2
    assert cp.sleeps[1] >= 3


async def test_unknown_response_fields_are_ignored(cp: Harness) -> None:
    keyset = msgspec.to_builtins(signed_keyset())
    keyset["comment"] = "added in v2"
    cp.router.get(f"/api/v1/agents/{AGENT_ID}/signing-key").mock(
        return_value=httpx.Response(200, json=keyset)
    )
    cp.router.get(f"/api/v1/agents/{AGENT_ID}").mock(
        return_value=httpx.Response(
            200,
            json={
                "id": AGENT_ID,
                "name": "web-1",
                "org_id": ORG_ID,
                "project_id": "prj_1",
                "environment_id": "env_1",
                "status": "online",
                "new_field": {"nested": [1, 2]},
                "resources": {"cpu_percent": 12.5, "gpu_count": 2},
            },
        )
    )
    cp.router.post(HEARTBEAT).mock(return_value=ok_heartbeat(upgrade_channel="beta"))

    record = await cp.client.get_self()
    assert (record.id, record.status) == (AGENT_ID, "online")
    assert record.resources is not None
    assert record.resources.cpu_percent == 12.5
    assert decode_keyset(await cp.client.signing_keys()).org_id == ORG_ID
    assert (await cp.client.heartbeat(Heartbeat())).keyset_version == 2


async def test_agent_routes_need_credentials() -> None:
    settings = AgentSettings(api_base_url=BASE).config()
    transport = httpx.MockTransport(respx.Router(base_url=BASE).handler)
    async with ControlPlaneClient(settings, transport=transport) as client:
        assert client.agent_id is None
        with pytest.raises(RuntimeError, match="set_credentials"):
            await client.get_self()


def test_error_tree() -> None:
    assert issubclass(TransientError, AgentError)
    assert TransientError.retryable
    for cls in (Unauthorized, Forbidden, NotFoundError, RequestRejected, InvalidResponse):
        assert issubclass(cls, PermanentError)
        assert not cls.retryable


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        (" 0 ", 0.0),
        ("-5", None),
        ("soon", None),
        ("99999999", MAX_RETRY_AFTER_SECONDS),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(value, now=now) == expected


def test_a_plain_http_control_plane_loads_no_certificate_bundle() -> None:
    import ssl

    from agent.client import tls_verification

    assert tls_verification("https://cp.example.test") is True
    context = tls_verification("http://127.0.0.1:8080")
    assert isinstance(context, ssl.SSLContext)
    # Fails closed: certificates are required and checked, and none is trusted.
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.cert_store_stats()["x509_ca"] == 0
