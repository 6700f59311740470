from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from controlplane.auth.secrets import digest_token
from controlplane.db.models import ApiTokenRow
from tests.conftest import Stack

pytestmark = pytest.mark.anyio


async def test_token_create_list_revoke(stack: Stack) -> None:
    person = await stack.human()
    created = await stack.ok("POST", "/api/v1/tokens", person, json={"name": "laptop"})
    token = created["token"]
    assert token.startswith("byteor_pat_")
    assert len(token) > 40
    assert created["hint"].endswith(token[-4:])
    assert created["expires_at"] is None

    listed = await stack.ok("GET", "/api/v1/tokens", person)
    assert created["id"] in [t["id"] for t in listed]
    assert all("token" not in t for t in listed)

    new_headers = {"Authorization": f"Bearer {token}"}
    assert (await stack.call("GET", "/api/v1/me", headers=new_headers)).status_code == 200
    assert (
        await stack.call("DELETE", f"/api/v1/tokens/{created['id']}", person)
    ).status_code == 204
    response = await stack.call("GET", "/api/v1/me", headers=new_headers)
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_only_the_digest_is_stored(stack: Stack) -> None:
    person = await stack.human()
    created = await stack.ok("POST", "/api/v1/tokens", person, json={"name": "ci"})
    async with stack.database.sessionmaker() as session:
        row = await session.scalar(select(ApiTokenRow).where(ApiTokenRow.id == created["id"]))
    assert row is not None
    assert row.token_hash == digest_token(created["token"])
    assert created["token"] not in (row.token_hash, row.hint)


async def test_expired_token_is_401(stack: Stack) -> None:
    person = await stack.human()
    created = await stack.ok(
        "POST", "/api/v1/tokens", person, json={"name": "short", "expires_in": 60}
    )
    assert created["expires_at"] is not None
    async with stack.database.sessionmaker() as session:
        await session.execute(
            update(ApiTokenRow)
            .where(ApiTokenRow.id == created["id"])
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        await session.commit()
    response = await stack.call(
        "GET", "/api/v1/me", headers={"Authorization": f"Bearer {created['token']}"}
    )
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


async def test_cannot_revoke_someone_elses_token(stack: Stack) -> None:
    alice, bob = await stack.human(), await stack.human()
    bobs = await stack.ok("POST", "/api/v1/tokens", bob, json={"name": "b"})
    response = await stack.call("DELETE", f"/api/v1/tokens/{bobs['id']}", alice)
    assert response.status_code == 404
    headers = {"Authorization": f"Bearer {bobs['token']}"}
    assert (await stack.call("GET", "/api/v1/me", headers=headers)).status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer byteor_pat_unknown",
        "Bearer not-even-prefixed",
        "Bearer byteor_agk_wrongkind",
    ],
)
async def test_bad_credentials_are_401(stack: Stack, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    response = await stack.call("GET", "/api/v1/orgs", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"].startswith('Bearer realm="byteor"')


@pytest.mark.parametrize("body", [{"name": "x", "expires_in": 1}, {"name": ""}, {"nom": "x"}])
async def test_bad_token_requests_are_400(stack: Stack, body: dict[str, object]) -> None:
    person = await stack.human()
    response = await stack.call("POST", "/api/v1/tokens", person, json=body)
    assert response.status_code == 400


async def test_me_describes_caller(stack: Stack) -> None:
    person = await stack.human(email="Dana@Example.com")
    me = await stack.ok("GET", "/api/v1/me", person)
    assert me["id"] == person.user_id
    assert me["kind"] == "human"
    assert me["email"] == "dana@example.com"
    assert me["memberships"] == []


async def test_a_token_never_mints_one_that_outlives_it(stack: Stack) -> None:
    person = await stack.human()
    short = await stack.ok(
        "POST", "/api/v1/tokens", person, json={"name": "short", "expires_in": 600}
    )
    headers = {"Authorization": f"Bearer {short['token']}"}
    forever = await stack.ok("POST", "/api/v1/tokens", headers=headers, json={"name": "forever"})
    assert forever["expires_at"] == short["expires_at"]
    longer = await stack.ok(
        "POST", "/api/v1/tokens", headers=headers, json={"name": "longer", "expires_in": 86400}
    )
    assert longer["expires_at"] == short["expires_at"]
    shorter = await stack.ok(
        "POST", "/api/v1/tokens", headers=headers, json={"name": "shorter", "expires_in": 60}
    )
    assert shorter["expires_at"] < short["expires_at"]
    unbounded = await stack.ok("POST", "/api/v1/tokens", person, json={"name": "free"})
    assert unbounded["expires_at"] is None
