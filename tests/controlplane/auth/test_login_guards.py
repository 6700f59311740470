"""Login routes without a provider round trip: configuration, cookies, state, sessions, logout.

The full browser flow against a real OpenID Connect provider is in ``test_oidc_login.py``; these
tests cover what the control plane decides on its own, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import select

from controlplane.app import create_app
from controlplane.auth.login import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    LoginFlow,
    new_flow,
    safe_redirect,
    seal_flow,
)
from controlplane.auth.oidc import OidcClient, _normalise_email
from controlplane.auth.secrets import TokenKind, digest_token
from controlplane.auth.service import new_token_row
from controlplane.db.models import ApiTokenRow, LoginStateRow, UserRow
from controlplane.errors import BadRequest, Unauthorized
from controlplane.settings import Settings
from tests.backends import throwaway_database
from tests.conftest import BACKENDS, GENEROUS_RATE_LIMITS, Actor, Stack, in_process_client
from tests.controlplane.auth.helpers import assert_problem, cookie
from tests.e2e.conftest import free_port

pytestmark = pytest.mark.anyio

PUBLIC = "http://testserver"


# -- not configured -----------------------------------------------------------------------------


async def test_login_without_oidc_settings_is_503(stack: Stack) -> None:
    for path in ("/auth/login", "/auth/login?redirect_to=/x", "/auth/callback?code=a&state=b"):
        body = assert_problem(
            await stack.client.get(path), 503, "not configured", "BYTEOR_CLOUD_OIDC_ISSUER"
        )
        assert body["type"] == "urn:byteor:problem:unavailable"
    assert await stack.count(ApiTokenRow, ApiTokenRow.kind == "session") == 0


# -- settings -----------------------------------------------------------------------------------


def test_partial_oidc_settings_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="BYTEOR_CLOUD_PUBLIC_BASE_URL"):
        Settings(data_dir=tmp_path, oidc_issuer="https://id.example.com", oidc_client_id="c")
    with pytest.raises(ValidationError, match="BYTEOR_CLOUD_OIDC_CLIENT_ID"):
        Settings(
            data_dir=tmp_path,
            oidc_issuer="https://id.example.com",
            public_base_url="https://byteor.example.com",
        )
    with pytest.raises(ValidationError, match="BYTEOR_CLOUD_OIDC_ISSUER"):
        Settings(data_dir=tmp_path, oidc_client_id="c", public_base_url="https://b.example.com")
    assert not Settings(data_dir=tmp_path).oidc_enabled


def test_oidc_settings_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BYTEOR_CLOUD_OIDC_ISSUER", "https://id.example.com/realms/ops/")
    monkeypatch.setenv("BYTEOR_CLOUD_OIDC_CLIENT_ID", "byteor")
    monkeypatch.setenv("BYTEOR_CLOUD_OIDC_CLIENT_SECRET", "s3cret")
    monkeypatch.setenv("BYTEOR_CLOUD_PUBLIC_BASE_URL", "https://byteor.example.com/")
    monkeypatch.setenv("BYTEOR_CLOUD_OIDC_ALLOWED_EMAIL_DOMAINS", "Example.com, @corp.io ,")
    monkeypatch.setenv("BYTEOR_CLOUD_OIDC_ALLOWED_EMAILS", "Ada@Partner.org")
    monkeypatch.setenv("BYTEOR_CLOUD_SESSION_TTL_SECONDS", "3600")
    settings = Settings(data_dir=tmp_path)
    assert settings.oidc_enabled
    assert settings.oidc_issuer == "https://id.example.com/realms/ops/"  # kept exactly
    assert settings.public_base_url == "https://byteor.example.com"
    assert settings.oidc_allowed_email_domains == ["example.com", "corp.io"]
    assert settings.oidc_allowed_emails == ["ada@partner.org"]
    assert settings.session_ttl_seconds == 3600
    assert settings.oidc_client_secret is not None
    assert "s3cret" not in repr(settings)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("oidc_issuer", "id.example.com", "absolute http(s) URL"),
        ("oidc_issuer", "ftp://id.example.com", "absolute http(s) URL"),
        ("public_base_url", "https://b.example.com/?x=1", "query or fragment"),
        ("oidc_allowed_email_domains", "not a domain", "e-mail domain"),
        ("oidc_allowed_emails", "nobody", "e-mail address"),
        ("oidc_scopes", "email profile", "openid"),
        ("oidc_auto_join_role", "owner", "owner"),
        ("session_ttl_seconds", "10", "greater than or equal"),
    ],
)
def test_bad_oidc_settings_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, field: str, value: str, message: str
) -> None:
    monkeypatch.setenv(f"BYTEOR_CLOUD_{field.upper()}", value)
    with pytest.raises(ValidationError, match=re.escape(message)):
        Settings(data_dir=tmp_path)


# -- redirect_to --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["/", "/orgs", "/orgs/org_1?tab=members#top", "/a%2F%2Fb"])
def test_same_origin_paths_are_accepted(value: str) -> None:
    assert safe_redirect(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "http:/evil.example",
        "evil.example",
        "orgs",
        "javascript:alert(1)",
        "/orgs\r\nSet-Cookie: x=y",
        "/ space",
        "/\u4e2d",
        "/\x85x",
        "/\x7f",
        "/" + "a" * 2048,
    ],
)
def test_other_origins_are_refused(value: str) -> None:
    with pytest.raises(BadRequest, match="path on this server"):
        safe_redirect(value)


# -- an app configured for a provider that is not running ---------------------------------------


@dataclass
class Configured:
    client: httpx.AsyncClient
    stack: Stack

    def flow(self, **changes: Any) -> LoginFlow:
        flow = new_flow(self.stack.settings, None)
        values = {f: getattr(flow, f) for f in flow.__struct_fields__}
        values.update(changes)
        return LoginFlow(**values)

    def cookie(self, flow: LoginFlow) -> str:
        return seal_flow(self.stack.app.state.kek, flow)

    async def callback(self, flow: LoginFlow | None, query: str, **kwargs: Any) -> httpx.Response:
        if "error=" in query or "code=" not in query:
            query += f"&iss={self.stack.settings.oidc_issuer}"  # as RFC 9207 providers send it
        headers = cookie(LOGIN_COOKIE, self.cookie(flow)) if flow is not None else {}
        return await self.client.get(f"/auth/callback{query}", headers=headers, **kwargs)

    async def session_token(self, user_id: str, *, expires_in: int = 3600) -> str:
        async with self.stack.database.sessionmaker() as session:
            row, secret = new_token_row(
                user_id, "login session", expires_in, kind=TokenKind.SESSION
            )
            session.add(row)
            await session.commit()
        return secret.token


@pytest.fixture(scope="module", params=BACKENDS)
async def configured(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Configured]:
    backend: str = request.param
    directory = tmp_path_factory.mktemp(f"login-{backend}")
    async with throwaway_database(backend, directory) as url:
        settings = Settings(
            data_dir=directory,
            database_url=url,
            auto_migrate=True,
            heartbeat_flush_seconds=60,
            oidc_issuer=f"http://127.0.0.1:{free_port()}",  # nothing listens there
            oidc_client_id="byteor",
            oidc_client_secret="secret",
            public_base_url=PUBLIC,
            oidc_http_timeout_seconds=2,
            **GENEROUS_RATE_LIMITS,
        )
        app = create_app(settings)
        async with app.lifespan(), in_process_client(app) as client:
            stack = Stack(
                client=client,
                app=app,
                database=app.state.database,
                backend=backend,
                settings=settings,
            )
            yield Configured(client=client, stack=stack)


def forgets_login_cookie(response: httpx.Response) -> bool:
    return any(
        h.startswith(f'{LOGIN_COOKIE}=""') and "Max-Age=0" in h
        for h in response.headers.get_list("set-cookie")
    )


async def test_unreachable_provider_is_502_and_sets_no_cookie(configured: Configured) -> None:
    response = await configured.client.get("/auth/login")
    assert_problem(response, 502, "could not be reached")
    assert "set-cookie" not in response.headers


async def test_login_refuses_a_redirect_to_another_origin(configured: Configured) -> None:
    response = await configured.client.get("/auth/login", params={"redirect_to": "//evil.example"})
    assert_problem(response, 400, "path on this server")
    long = await configured.client.get("/auth/login", params={"redirect_to": "/" + "a" * 3000})
    assert_problem(long, 400)


async def test_callback_refusals_issue_nothing(configured: Configured) -> None:
    stack = configured.stack
    good = configured.flow()
    cases: list[tuple[LoginFlow | None, str, dict[str, Any], int, str]] = [
        (None, f"?code=abc&state={good.state}", {}, 400, "No login is in progress"),
        (good, "?code=abc", {}, 400, "no state"),
        (good, "?code=abc&state=someone-elses", {}, 400, "does not match"),
        (good, f"?code=abc&state={good.state[:-1]}", {}, 400, "does not match"),
        (configured.flow(expires=int(time.time()) - 1), "?code=a&state=", {}, 400, "expired"),
        (good, "?code=abc&state=" + "s" * 600, {}, 400, "state: "),
    ]
    for flow, query, kwargs, status, needle in cases:
        if flow is not None and query.endswith("state="):
            query += flow.state
        response = await configured.callback(flow, query, **kwargs)
        assert_problem(response, status, needle)
    # a forged or altered cookie
    sealed = configured.cookie(good)
    forged = sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB")
    for value, needle in [
        (forged, "not valid"),
        ("not-a-cookie", "not valid"),
        (sealed[: len(sealed) // 2], "not valid"),
        ("", "No login is in progress"),
    ]:
        response = await configured.client.get(
            f"/auth/callback?code=abc&state={good.state}", headers=cookie(LOGIN_COOKIE, value)
        )
        assert_problem(response, 400, needle)
    assert await stack.count(ApiTokenRow, ApiTokenRow.kind == "session") == 0
    # nothing was recorded for refused callbacks: the good state can still be used once
    assert (
        await stack.count(LoginStateRow, LoginStateRow.state_digest == digest_token(good.state))
        == 0
    )


async def test_refusals_clear_the_login_cookie(configured: Configured) -> None:
    good = configured.flow()
    response = await configured.callback(good, "?code=abc&state=wrong")
    assert response.status_code == 400
    assert forgets_login_cookie(response)
    assert response.headers["cache-control"] == "no-store"


async def test_a_cookie_from_another_server_is_refused(
    configured: Configured, tmp_path: Path
) -> None:
    other = create_app(Settings(data_dir=tmp_path, **GENEROUS_RATE_LIMITS))
    async with other.lifespan():
        flow = configured.flow()
        sealed = seal_flow(other.state.kek, flow)
    response = await configured.client.get(
        f"/auth/callback?code=abc&state={flow.state}", headers=cookie(LOGIN_COOKIE, sealed)
    )
    assert_problem(response, 400, "not valid")


async def test_provider_errors_are_401_or_400_and_the_state_is_single_use(
    configured: Configured,
) -> None:
    stack = configured.stack
    denied = configured.flow()
    query = f"?error=access_denied&error_description=End-User+aborted&state={denied.state}"
    body = assert_problem(await configured.callback(denied, query), 401, "access_denied")
    assert "End-User aborted" in body["detail"]
    # the same state again (a replayed callback) is refused even with a code
    replay = await configured.callback(denied, f"?code=abc&state={denied.state}")
    assert_problem(replay, 400, "already completed")
    other = configured.flow()
    response = await configured.callback(
        other, f"?error=invalid_scope&error_description=%00bad%07&state={other.state}"
    )
    body = assert_problem(response, 400, "invalid_scope")
    assert "\x00" not in body["detail"]
    missing_code = configured.flow()
    assert_problem(
        await configured.callback(missing_code, f"?state={missing_code.state}"),
        400,
        "no authorization code",
    )
    assert await stack.count(ApiTokenRow, ApiTokenRow.kind == "session") == 0


async def test_callback_with_a_good_state_but_unreachable_provider_is_502(
    configured: Configured,
) -> None:
    flow = configured.flow()
    response = await configured.callback(flow, f"?code=abc&state={flow.state}")
    assert_problem(response, 502)
    assert forgets_login_cookie(response)
    assert await configured.stack.count(ApiTokenRow, ApiTokenRow.kind == "session") == 0


# -- the session token: bearer, cookie, logout --------------------------------------------------


async def person(configured: Configured) -> Actor:
    return await configured.stack.human()


async def test_session_token_works_as_bearer_and_is_listed_as_a_session(
    configured: Configured,
) -> None:
    stack = configured.stack
    actor = await person(configured)
    token = await configured.session_token(actor.user_id)
    assert token.startswith("byteor_ses_")
    me = await stack.ok("GET", "/api/v1/me", Actor(actor.user_id, token))
    assert me["id"] == actor.user_id
    tokens = await stack.ok("GET", "/api/v1/tokens", actor)
    assert sorted(t["kind"] for t in tokens) == ["personal", "session"]


async def test_session_cookie_authenticates_reads_and_same_origin_changes_only(
    configured: Configured,
) -> None:
    stack = configured.stack
    actor = await person(configured)
    token = await configured.session_token(actor.user_id)
    client = configured.client
    cookies = cookie(SESSION_COOKIE, token)
    me = await client.get("/api/v1/me", headers=cookies)
    assert me.status_code == 200, me.text
    assert me.json()["id"] == actor.user_id
    body = {"name": "from-browser"}

    async def create(**headers: str) -> httpx.Response:
        return await client.post("/api/v1/tokens", json=body, headers={**cookies, **headers})

    assert_problem(await create(), 403, "Cross-site")
    assert_problem(await create(Origin="https://evil.example"), 403, "Cross-site")
    assert_problem(await create(Origin="http://testserver.evil.example"), 403, "Cross-site")
    assert_problem(await create(**{"Sec-Fetch-Site": "cross-site"}), 403)
    made = await create(Origin=PUBLIC)
    assert made.status_code == 201, made.text
    same = await create(**{"Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 201, same.text
    async with stack.database.sessionmaker() as session:
        names = list(
            await session.scalars(
                select(ApiTokenRow.name).where(ApiTokenRow.user_id == actor.user_id)
            )
        )
    assert names.count("from-browser") == 2  # the refused ones wrote nothing


async def test_every_changing_method_needs_same_origin_with_the_cookie(
    configured: Configured,
) -> None:
    stack = configured.stack
    actor = await person(configured)
    tree = await stack.tree(actor)
    token = await configured.session_token(actor.user_id)
    client = configured.client
    cookies = cookie(SESSION_COOKIE, token)
    for origin in (None, "null", "HTTP://TESTSERVER:8080", "http://testserver.evil.example"):
        headers = dict(cookies) if origin is None else {**cookies, "Origin": origin}
        put = await client.put(tree.project_path, json={"name": "renamed"}, headers=headers)
        assert_problem(put, 403, "Cross-site")
        deleted = await client.delete(tree.env_path, headers=headers)
        assert_problem(deleted, 403, "Cross-site")
    assert (await stack.ok("GET", tree.project_path, actor))["name"] == "payments"
    assert (await stack.call("GET", tree.env_path, actor)).status_code == 200
    same = {**cookies, "Origin": "HTTP://TestServer"}  # scheme and host compare case-insensitively
    put = await client.put(tree.project_path, json={"name": "renamed"}, headers=same)
    assert put.status_code == 200, put.text
    assert (await client.delete(tree.env_path, headers=same)).status_code == 204


async def test_only_session_tokens_are_accepted_in_the_cookie(configured: Configured) -> None:
    actor = await person(configured)
    response = await configured.client.get(
        "/api/v1/me", headers=cookie(SESSION_COOKIE, actor.token)
    )
    assert_problem(response, 401, "session token")
    unknown = await configured.client.get(
        "/api/v1/me", headers=cookie(SESSION_COOKIE, "byteor_ses_" + "x" * 43)
    )
    assert_problem(unknown, 401, "unknown")
    # an Authorization header wins over a stale cookie
    header = await configured.client.get(
        "/api/v1/me", headers=cookie(SESSION_COOKIE, "byteor_ses_stale", **actor.headers)
    )
    assert header.status_code == 200


async def test_logout_revokes_the_session(configured: Configured) -> None:
    stack = configured.stack
    actor = await person(configured)
    token = await configured.session_token(actor.user_id)
    session_actor = Actor(actor.user_id, token)
    response = await stack.call("POST", "/auth/logout", session_actor)
    assert response.status_code == 204, response.text
    cleared = response.headers.get_list("set-cookie")
    assert any(c.startswith(f'{SESSION_COOKIE}=""') and "Max-Age=0" in c for c in cleared)
    assert_problem(await stack.call("GET", "/api/v1/me", session_actor), 401, "revoked")
    assert_problem(await stack.call("POST", "/auth/logout", session_actor), 401)
    # the person's API token is untouched
    assert (await stack.call("GET", "/api/v1/me", actor)).status_code == 200


async def test_logout_by_cookie_needs_same_origin(configured: Configured) -> None:
    actor = await person(configured)
    token = await configured.session_token(actor.user_id)
    cookies = cookie(SESSION_COOKIE, token)
    assert_problem(await configured.client.post("/auth/logout", headers=cookies), 403)
    ok = await configured.client.post("/auth/logout", headers={**cookies, "Origin": PUBLIC})
    assert ok.status_code == 204
    assert_problem(await configured.client.get("/api/v1/me", headers=cookies), 401)


async def test_logout_clears_a_stale_cookie(configured: Configured) -> None:
    actor = await person(configured)
    token = await configured.session_token(actor.user_id)
    assert (
        await configured.stack.call("POST", "/auth/logout", Actor(actor.user_id, token))
    ).status_code == 204
    for stale in (token, "byteor_ses_unknown", "garbage"):
        response = await configured.client.post(
            "/auth/logout", headers=cookie(SESSION_COOKIE, stale, Origin=PUBLIC)
        )
        assert response.status_code == 204, response.text
        assert any(
            c.startswith(f'{SESSION_COOKIE}=""') and "Max-Age=0" in c
            for c in response.headers.get_list("set-cookie")
        )
    cross = await configured.client.post("/auth/logout", headers=cookie(SESSION_COOKIE, token))
    assert_problem(cross, 403, "Cross-site")


async def test_logout_refuses_api_tokens_and_anonymous(configured: Configured) -> None:
    stack = configured.stack
    actor = await person(configured)
    assert_problem(await stack.call("POST", "/auth/logout", actor), 400, "DELETE /api/v1/tokens")
    assert (await stack.call("GET", "/api/v1/me", actor)).status_code == 200
    assert_problem(await stack.call("POST", "/auth/logout"), 401, "Nothing to log out")
    assert_problem(
        await stack.call("POST", "/auth/logout", Actor(actor.user_id, "byteor_ses_nope")),
        401,
        "unknown",
    )


async def test_expired_session_is_refused(configured: Configured) -> None:
    actor = await person(configured)
    async with configured.stack.database.sessionmaker() as session:
        row, secret = new_token_row(actor.user_id, "login session", 60, kind=TokenKind.SESSION)
        row.expires_at = row.created_at.replace(year=row.created_at.year - 1)
        session.add(row)
        await session.commit()
    response = await configured.stack.call("GET", "/api/v1/me", Actor(actor.user_id, secret.token))
    assert_problem(response, 401, "expired")


async def test_sessions_die_with_their_user(configured: Configured) -> None:
    stack = configured.stack
    actor = await person(configured)
    await configured.session_token(actor.user_id)
    async with stack.database.sessionmaker() as session:
        user = await session.get(UserRow, actor.user_id)
        assert user is not None
        await session.delete(user)
        await session.commit()
    assert await stack.count(ApiTokenRow, ApiTokenRow.user_id == actor.user_id) == 0


@pytest.mark.usefixtures("one_rate_window")
async def test_login_routes_always_spend_the_address_budget(tmp_path: Path) -> None:
    limits = {**GENEROUS_RATE_LIMITS, "rate_limit_anonymous": "5/minute"}
    app = create_app(Settings(data_dir=tmp_path, **limits))
    async with app.lifespan(), in_process_client(app) as client:
        statuses = []
        for _ in range(8):
            response = await client.get(
                "/auth/login", headers=cookie(SESSION_COOKIE, "byteor_ses_junk")
            )
            statuses.append(response.status_code)
        callback = await client.get("/auth/callback", headers={"Authorization": "Bearer x"})
    assert statuses == [503] * 5 + [429] * 3
    assert callback.status_code == 429
    assert "retry-after" in callback.headers


def relying_party(tmp_path: Path, issuer: str) -> OidcClient:
    return OidcClient.from_settings(
        Settings(
            data_dir=tmp_path,
            oidc_issuer=issuer,
            oidc_client_id="byteor",
            public_base_url=PUBLIC,
        )
    )


def id_claims(issuer: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": "subject-1",
        "aud": "byteor",
        "exp": now + 60,
        "iat": now,
        "nonce": "n-1",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


async def test_id_token_claims_are_checked_exactly(tmp_path: Path) -> None:
    issuer = "https://tenant.example/"  # some providers' issuers end in a slash
    rp = relying_party(tmp_path, issuer)
    try:
        rp._check_claims(id_claims(issuer), "n-1")
        rp._check_claims(id_claims(issuer, aud=["byteor", "api"], azp="byteor"), "n-1")
        refused: list[tuple[dict[str, Any], str]] = [
            (id_claims("https://tenant.example"), "iss"),
            (id_claims(issuer, iss=None), "iss"),
            (id_claims(issuer, aud="other"), "aud"),
            (id_claims(issuer, aud=["byteor", "api"]), "azp"),
            (id_claims(issuer, azp="other"), "azp"),
            (id_claims(issuer, exp=int(time.time()) - 120), "expired"),
            (id_claims(issuer, iat=None), "iat"),
            (id_claims(issuer, nbf=int(time.time()) + 600), "not yet valid"),
            (id_claims(issuer, nonce="n-2"), "nonce"),
            (id_claims(issuer, nonce=None), "nonce"),
            (id_claims(issuer, sub=None), "sub"),
            (id_claims(issuer, sub=42), "sub"),
            (id_claims(issuer, sub="x" * 300), "sub"),
        ]
        for claims, needle in refused:
            with pytest.raises(Unauthorized) as caught:
                rp._check_claims(claims, "n-1")
            assert needle in caught.value.detail, (claims, caught.value.detail)
    finally:
        await rp.aclose()


def test_the_issuer_keeps_its_trailing_slash_and_discovery_is_beneath_it(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        oidc_issuer="https://tenant.example/",
        oidc_client_id="byteor",
        public_base_url=PUBLIC + "/",
    )
    assert settings.oidc_issuer == "https://tenant.example/"
    assert settings.public_base_url == PUBLIC


@pytest.mark.parametrize(
    ("email", "expected"),
    [
        (" Ada@Example.COM ", "ada@example.com"),
        ("\u212aelvin@example.com", "\u212aelvin@example.com"),  # never Unicode-folded to k
        ("", None),
        (42, None),
        (None, None),
    ],
)
def test_addresses_from_the_provider_are_normalised_safely(
    email: object, expected: str | None
) -> None:
    assert _normalise_email(email) == expected


async def test_openapi_documents_the_login_routes(stack: Stack) -> None:
    schema = (await stack.call("GET", "/schema/openapi.json")).json()
    login = schema["paths"]["/auth/login"]["get"]
    callback = schema["paths"]["/auth/callback"]["get"]
    logout = schema["paths"]["/auth/logout"]["post"]
    assert {"302", "400", "429", "502", "503"} <= set(login["responses"])
    assert {"200", "303", "400", "401", "403", "502", "503"} <= set(callback["responses"])
    assert {"204", "400", "401", "403"} <= set(logout["responses"])
    assert login["security"] == [{}]
    assert callback["security"] == [{}]
    assert {"bearer": []} in logout["security"]
    assert {p["name"] for p in callback["parameters"]} >= {"code", "state", "error", "iss"}
    assert "LoginSession" in str(callback["responses"]["200"])
    assert "session_cookie" in schema["components"]["securitySchemes"]
