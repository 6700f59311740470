"""Bad input of every kind gets an RFC 9457 problem with the right status, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from controlplane.db.models import ProjectRow
from tests.conftest import Stack, Tree

pytestmark = pytest.mark.anyio

FOUR_MIB = 4 * 1024 * 1024


def assert_problem(response: object, status: int) -> dict[str, object]:
    import httpx

    assert isinstance(response, httpx.Response)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["status"] == status
    assert str(body["type"]).startswith("urn:byteor:problem:")
    assert body["title"]
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Traceback" not in response.text
    return body


@pytest.mark.parametrize(
    "content",
    [b"{", b'{"name": }', b"\xff\xfe\x00garbage", b"", b"[1, 2", b'{"name": "a"}{"x"}'],
)
async def test_malformed_json_is_400(stack: Stack, tree: Tree, content: bytes) -> None:
    response = await stack.call(
        "POST",
        f"{tree.org_path}/projects",
        tree.owner,
        content=content,
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 400)
    assert await stack.count(ProjectRow, ProjectRow.org_id == tree.org_id) == 1


async def test_wrong_type_names_the_field(stack: Stack, tree: Tree) -> None:
    response = await stack.call("POST", f"{tree.org_path}/projects", tree.owner, json={"name": 42})
    body = assert_problem(response, 400)
    assert body["errors"] == [
        {"field": "name", "message": "Expected `str`, got `int`", "source": "body"}
    ]


async def test_unknown_field_is_named(stack: Stack, tree: Tree) -> None:
    response = await stack.call(
        "POST", f"{tree.org_path}/projects", tree.owner, json={"name": "x", "nmae": "y"}
    )
    body = assert_problem(response, 400)
    assert "nmae" in str(body["detail"])


async def test_deeply_nested_json_is_rejected_cleanly(stack: Stack, tree: Tree) -> None:
    depth = 100_000
    content = (
        b'{"name": "deep", "runtime_config": ' + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
    )
    response = await stack.call(
        "POST",
        f"{tree.org_path}/projects",
        tree.owner,
        content=content,
        headers={"content-type": "application/json"},
    )
    assert response.status_code in (400, 413)
    assert response.headers["content-type"] == "application/problem+json"


async def test_method_not_allowed_is_405(stack: Stack, tree: Tree) -> None:
    response = await stack.call("PATCH", tree.org_path, tree.owner, json={})
    assert_problem(response, 405)


async def test_unknown_route_is_404(stack: Stack) -> None:
    assert_problem(await stack.call("GET", "/api/v1/nothing-here"), 404)


async def test_body_over_4mib_is_413_with_content_length(stack: Stack, tree: Tree) -> None:
    content = b'{"name": "' + b"a" * FOUR_MIB + b'"}'
    response = await stack.call(
        "POST",
        f"{tree.org_path}/projects",
        tree.owner,
        content=content,
        headers={"content-type": "application/json"},
    )
    assert_problem(response, 413)
    assert await stack.count(ProjectRow, ProjectRow.org_id == tree.org_id) == 1


async def test_body_over_4mib_is_413_when_chunked(stack: Stack, tree: Tree) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "'
        for _ in range(5):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    response = await stack.call(
        "POST",
        f"{tree.org_path}/projects",
        tree.owner,
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413)


async def test_caller_request_id_is_echoed(stack: Stack) -> None:
    response = await stack.call("GET", "/api/v1/orgs", headers={"X-Request-ID": "trace-123"})
    body = assert_problem(response, 401)
    assert body["request_id"] == "trace-123"


async def test_hostile_request_id_is_replaced(stack: Stack) -> None:
    response = await stack.call("GET", "/healthz", headers={"X-Request-ID": "a b\tc" * 50})
    assert response.status_code == 200
    assert " " not in response.headers["x-request-id"]


async def _hang_up_mid_body(stack: Stack, path: str, headers: dict[str, str]) -> int:
    """Send the start of a JSON body, then disconnect, as a timed-out client does."""
    incoming: list[dict[str, object]] = [
        {"type": "http.request", "body": b'{"sequ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [*raw, (b"content-type", b"application/json"), (b"host", b"testserver")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    app: Any = stack.app  # a raw ASGI call, with hand-made messages
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    status = start["status"]
    assert isinstance(status, int)
    return status


async def test_a_client_gone_mid_body_is_no_server_error(
    stack: Stack, tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    """A fleet's timed-out requests hang up while their bodies stream in: Litestar calls that
    a 500, but nothing failed here. It is logged at info, answered 400, on the heartbeat's
    fast lane as on any other route."""
    from tests.controlplane.agents.helpers import agent_headers, enrolled_agent

    agent = await enrolled_agent(stack, tree)
    beat = f"/api/v1/agents/{agent['agent_id']}/heartbeat"
    projects_before = await stack.count(ProjectRow)
    with caplog.at_level("INFO", logger="byteor"):
        assert await _hang_up_mid_body(stack, beat, agent_headers(agent)) == 400
        projects = f"{tree.org_path}/projects"
        assert await _hang_up_mid_body(stack, projects, tree.owner.headers) == 400
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    gone = [r for r in caplog.records if "disconnected before its request body" in r.message]
    assert len(gone) == 2
    assert await stack.count(ProjectRow) == projects_before  # nothing half-written
