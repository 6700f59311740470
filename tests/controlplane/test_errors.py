"""Bad input of every kind gets an RFC 9457 problem with the right status, never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator

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
