"""OpenID Connect login against a real provider (oidc-provider on 127.0.0.1), driven like a browser.

The provider sits behind :class:`~tests.oidc.TokenTamperingProxy`, which it advertises as its
issuer, so every call the control plane makes to it (discovery, JWKS, token, userinfo) is real and
goes through the proxy; the proxy can delay token responses or swap the ID token in them for
another real one, which is how the expired-token and wrong-audience cases are produced.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest
from litestar import Litestar
from sqlalchemy import select

from controlplane.app import create_app
from controlplane.auth.login import LOGIN_COOKIE, SESSION_COOKIE
from controlplane.auth.oidc import OidcClient
from controlplane.auth.secrets import digest_token
from controlplane.db.models import ApiTokenRow, UserIdentityRow, UserRow
from controlplane.settings import Settings
from tests.backends import throwaway_database
from tests.conftest import BACKENDS, GENEROUS_RATE_LIMITS, Actor, Stack, in_process_client
from tests.controlplane.auth.helpers import assert_problem as problem_of
from tests.oidc import OidcProvider, TokenTamperingProxy, browser_login

pytestmark = pytest.mark.anyio

PUBLIC = "http://testserver"
CALLBACK = f"{PUBLIC}/auth/callback"
PREFIXED_CALLBACK = f"{PUBLIC}/cp/auth/callback"
SECURE_CALLBACK = "https://testserver/auth/callback"
RP = {
    "client_id": "byteor",
    "client_secret": "rp-secret",
    "redirect_uris": [CALLBACK, PREFIXED_CALLBACK, SECURE_CALLBACK],
}
#: A secret with characters client_secret_basic must form-encode (RFC 6749 §2.3.1).
ODD_RP = {
    "client_id": "byteor:odd",
    "client_secret": "p+a%s:s/w&rd=~!",
    "redirect_uris": [CALLBACK],
}
OTHER_RP = {"client_id": "other-app", "client_secret": "other-secret", "redirect_uris": [CALLBACK]}
SHORT_RP = {
    "client_id": "byteor-short",
    "client_secret": "short-secret",
    "redirect_uris": [CALLBACK],
    "id_token_ttl": 1,
}
DISCOVERY = "/.well-known/openid-configuration"


@dataclass
class IdP:
    provider: OidcProvider
    proxy: TokenTamperingProxy

    @property
    def issuer(self) -> str:
        return self.provider.issuer


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    # conform_id_token_claims: e-mail and name come from userinfo, as oidc-provider does by default
    with (
        TokenTamperingProxy() as proxy,
        OidcProvider(
            [RP, OTHER_RP, SHORT_RP, ODD_RP], issuer=proxy.url, conform_id_token_claims=True
        ) as provider,
    ):
        proxy.upstream = provider.url
        yield IdP(provider, proxy)


@pytest.fixture(autouse=True)
def _untampered(idp: IdP) -> Iterator[None]:
    idp.proxy.token_delay = 0
    idp.proxy.substitute_id_token = None
    yield
    idp.proxy.token_delay = 0
    idp.proxy.substitute_id_token = None


def rp_settings(idp: IdP, directory: Path, url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": directory,
        "database_url": url,
        "auto_migrate": True,
        "heartbeat_flush_seconds": 60,
        "oidc_issuer": idp.issuer,
        "oidc_client_id": RP["client_id"],
        "oidc_client_secret": RP["client_secret"],
        "public_base_url": PUBLIC,
        **GENEROUS_RATE_LIMITS,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Stack]:
    app = create_app(settings)
    async with app.lifespan(), in_process_client(app) as client:
        yield Stack(
            client=client,
            app=app,
            database=app.state.database,
            backend="sqlite" if settings.is_sqlite else "postgresql",
            settings=settings,
        )


@dataclass
class Plane:
    """A control plane configured for the test provider, on SQLite or PostgreSQL."""

    stack: Stack
    idp: IdP
    directory: Path
    url: str

    @property
    def app(self) -> Litestar:
        return self.stack.app

    def browser(self) -> httpx.AsyncClient:
        """A fresh browser for the control plane (its own cookie jar)."""
        return in_process_client(self.app)

    @asynccontextmanager
    async def variant(self, **overrides: Any) -> AsyncIterator[Stack]:
        """Another control plane process on the same database with other settings."""
        settings = rp_settings(self.idp, self.directory, self.url, **overrides)
        async with running(settings) as stack:
            yield stack

    async def session_tokens(self) -> int:
        return await self.stack.count(ApiTokenRow, ApiTokenRow.kind == "session")


@pytest.fixture(scope="module", params=BACKENDS)
async def plane(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, idp: IdP
) -> AsyncIterator[Plane]:
    backend: str = request.param
    directory = tmp_path_factory.mktemp(f"oidc-{backend}")
    async with (
        throwaway_database(backend, directory) as url,
        running(rp_settings(idp, directory, url)) as stack,
    ):
        yield Plane(stack=stack, idp=idp, directory=directory, url=url)


def assert_problem(response: httpx.Response, status: int, *needles: str) -> dict[str, Any]:
    """A problem+json refusal that issued no session (neither in the body nor as a cookie)."""
    body = problem_of(response, status, *needles)
    assert "byteor_ses_" not in response.text
    assert not any(
        c.startswith(f"{SESSION_COOKIE}=") for c in response.headers.get_list("set-cookie")
    )
    return body


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(("", "", parts.path, parts.query, ""))


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(("", "", parts.path, urlencode(query), ""))


@dataclass
class Started:
    """A login started at the control plane and completed at the provider, not yet called back."""

    browser: httpx.AsyncClient
    callback: str
    login_cookie: str

    async def finish(self, url: str | None = None) -> httpx.Response:
        return await self.browser.get(path_of(url or self.callback))


async def start_login(
    browser: httpx.AsyncClient,
    idp_browser: httpx.AsyncClient,
    *,
    login: str,
    redirect_to: str | None = None,
    approve: bool = True,
    callback_url: str = CALLBACK,
) -> Started:
    params = {"redirect_to": redirect_to} if redirect_to else {}
    response = await browser.get("/auth/login", params=params)
    assert response.status_code == 302, response.text
    sealed = browser.cookies.get(LOGIN_COOKIE)
    assert sealed
    callback = await browser_login(
        idp_browser,
        response.headers["location"],
        login=login,
        redirect_prefix=callback_url,
        approve=approve,
    )
    return Started(browser=browser, callback=callback, login_cookie=sealed)


@asynccontextmanager
async def browsers(plane: Plane) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    """A browser's two sides: the control plane's cookie jar and the provider's."""
    async with (
        plane.browser() as browser,
        httpx.AsyncClient(trust_env=False, timeout=15) as idp_browser,
    ):
        yield browser, idp_browser


@asynccontextmanager
async def logged_in(
    plane: Plane, login: str, *, redirect_to: str | None = None
) -> AsyncIterator[tuple[httpx.Response, httpx.AsyncClient]]:
    """The whole flow in a fresh browser: the callback's response, and the browser."""
    async with browsers(plane) as (browser, idp_browser):
        started = await start_login(browser, idp_browser, login=login, redirect_to=redirect_to)
        yield await started.finish(), browser


async def log_in(plane: Plane, login: str) -> httpx.Response:
    """The callback's response of a whole login in a fresh browser (then closed)."""
    async with logged_in(plane, login) as (response, _):
        return response


async def invite(plane: Plane, email: str, role: str = "deployer") -> tuple[Actor, str]:
    stack = plane.stack
    owner = await stack.human()
    org = await stack.ok("POST", "/api/v1/orgs", owner, json={"name": stack.unique("org")})
    await stack.ok(
        "POST", f"/api/v1/orgs/{org['id']}/members", owner, json={"email": email, "role": role}
    )
    return owner, org["id"]


# -- the happy path -----------------------------------------------------------------------------


async def test_login_redirects_to_the_provider_with_pkce_and_a_sealed_cookie(plane: Plane) -> None:
    async with plane.browser() as browser:
        response = await browser.get("/auth/login")
    assert response.status_code == 302
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}" == plane.idp.issuer
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == RP["client_id"]
    assert query["redirect_uri"] == CALLBACK
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert set(query["scope"].split()) == {"openid", "email", "profile"}
    assert len(query["state"]) >= 43
    assert len(query["nonce"]) >= 43
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith(f"{LOGIN_COOKIE}=")
    )
    assert "HttpOnly" in cookie
    assert "SameSite=lax" in cookie
    assert "Path=/auth/callback" in cookie
    assert "Max-Age=600" in cookie
    # the cookie is sealed: neither the state, the nonce nor anything else is readable in it
    value = cookie.split(";")[0].split("=", 1)[1]
    assert query["state"] not in value
    assert query["nonce"] not in value
    decoded = base64.urlsafe_b64decode(value.strip('"') + "==")
    assert query["state"].encode() not in decoded
    assert response.headers["cache-control"] == "no-store"


async def test_browser_login_issues_a_session_that_works_on_me(plane: Plane) -> None:
    stack = plane.stack
    email = f"{stack.unique('ada')}@example.com"
    _, org_id = await invite(plane, email)
    async with logged_in(plane, email) as (response, browser):
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        token = body["token"]
        assert token.startswith("byteor_ses_")
        assert body["token_type"] == "Bearer"
        assert body["email"] == email
        assert body["new_user"] is False
        set_cookies = response.headers.get_list("set-cookie")
        session_cookie = next(c for c in set_cookies if c.startswith(f"{SESSION_COOKIE}="))
        assert token in session_cookie
        assert "HttpOnly" in session_cookie
        assert "SameSite=lax" in session_cookie
        assert "Max-Age=43200" in session_cookie
        assert any(c.startswith(f'{LOGIN_COOKIE}=""') for c in set_cookies)

        me = await stack.ok("GET", "/api/v1/me", Actor(body["user_id"], token))
        assert me["email"] == email
        assert [(m["org_id"], m["role"]) for m in me["memberships"]] == [(org_id, "deployer")]
        # the browser's cookie authenticates too
        by_cookie = await browser.get("/api/v1/me")
        assert by_cookie.status_code == 200, by_cookie.text
        assert by_cookie.json()["id"] == body["user_id"]

    async with stack.database.sessionmaker() as session:
        row = await session.scalar(select(ApiTokenRow).where(ApiTokenRow.id == body["token_id"]))
        assert row is not None
        assert row.kind == "session"
        assert row.token_hash == digest_token(token)  # only the digest is stored
        assert row.expires_at is not None
        identity = await session.scalar(
            select(UserIdentityRow).where(UserIdentityRow.user_id == body["user_id"])
        )
        assert identity is not None
        assert (identity.issuer, identity.subject) == (plane.idp.issuer, email)


async def test_redirect_to_returns_to_the_path_with_the_session(plane: Plane) -> None:
    email = f"{plane.stack.unique('grace')}@example.com"
    await invite(plane, email)
    async with logged_in(plane, email, redirect_to="/orgs?tab=members") as (response, browser):
        assert response.status_code == 303, response.text
        assert response.headers["location"] == f"{PUBLIC}/orgs?tab=members"
        assert response.json()["redirect_to"] == "/orgs?tab=members"
        assert browser.cookies.get(SESSION_COOKIE) == response.json()["token"]


async def test_the_next_login_finds_the_person_by_subject_after_an_email_change(
    plane: Plane,
) -> None:
    stack = plane.stack
    login = stack.unique("hopper")
    await invite(plane, f"{login}@example.com")
    first = await log_in(plane, login)
    assert first.status_code == 200, first.text
    plane.idp.provider.set_account(login, email=f"{login}@navy.example.com", name="Grace Hopper")
    second = await log_in(plane, login)
    assert second.status_code == 200, second.text
    assert second.json()["user_id"] == first.json()["user_id"]
    assert second.json()["token"] != first.json()["token"]
    assert await stack.count(UserIdentityRow, UserIdentityRow.subject == login) == 1


async def test_logout_revokes_the_session(plane: Plane) -> None:
    email = f"{plane.stack.unique('lin')}@example.com"
    await invite(plane, email)
    async with logged_in(plane, email) as (response, browser):
        token = response.json()["token"]
        out = await browser.post("/auth/logout", headers={"Origin": PUBLIC})
        assert out.status_code == 204, out.text
        assert browser.cookies.get(SESSION_COOKIE) is None
    gone = await plane.stack.client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert gone.status_code == 401
    assert "revoked" in gone.json()["detail"]


# -- who may log in -----------------------------------------------------------------------------


async def test_uninvited_people_are_refused(plane: Plane) -> None:
    email = f"{plane.stack.unique('stranger')}@elsewhere.example"
    before = await plane.session_tokens()
    response = await log_in(plane, email)
    assert_problem(response, 403, "has not been invited")
    assert await plane.stack.count(UserRow, UserRow.email == email) == 0
    assert await plane.session_tokens() == before


async def test_unverified_addresses_are_refused(plane: Plane) -> None:
    login = plane.stack.unique("eve")
    await invite(plane, f"{login}@example.com")
    plane.idp.provider.set_account(login, email_verified=False)
    response = await log_in(plane, login)
    assert_problem(response, 403, "has not verified")
    assert await plane.stack.count(UserIdentityRow, UserIdentityRow.subject == login) == 0


async def test_allowed_domains_sign_up_without_membership_or_with_auto_join(plane: Plane) -> None:
    stack = plane.stack
    owner = await stack.human()
    org = await stack.ok("POST", "/api/v1/orgs", owner, json={"name": stack.unique("org")})
    async with plane.variant(oidc_allowed_email_domains="open.example") as open_plane:
        view = Plane(open_plane, plane.idp, plane.directory, plane.url)
        newcomer = f"{stack.unique('new')}@open.example"
        response = await log_in(view, newcomer)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["new_user"] is True
        me = await open_plane.ok("GET", "/api/v1/me", Actor(body["user_id"], body["token"]))
        assert me["memberships"] == []
        assert me["name"] == newcomer  # oidc-provider names accounts after their login
    async with plane.variant(
        oidc_allowed_emails=f"joiner@{stack.unique('x')}.example,",
        oidc_allowed_email_domains="join.example",
        oidc_auto_join_org_id=org["id"],
        oidc_auto_join_role="approver",
    ) as joining:
        view = Plane(joining, plane.idp, plane.directory, plane.url)
        joiner = f"{stack.unique('joiner')}@join.example"
        response = await log_in(view, joiner)
        assert response.status_code == 200, response.text
        body = response.json()
        me = await joining.ok("GET", "/api/v1/me", Actor(body["user_id"], body["token"]))
        assert [(m["org_id"], m["role"]) for m in me["memberships"]] == [(org["id"], "approver")]


# -- refusals: nothing is issued ----------------------------------------------------------------


async def test_tampered_state_is_refused_before_the_code_is_redeemed(plane: Plane) -> None:
    email = f"{plane.stack.unique('mallory')}@example.com"
    await invite(plane, email)
    before = await plane.session_tokens()
    tokens_before = plane.idp.proxy.hits["/token"]
    async with browsers(plane) as (browser, idp_browser):
        started = await start_login(browser, idp_browser, login=email)
        state = parse_qs(urlsplit(started.callback).query)["state"][0]
        tampered = with_query(
            started.callback, state=state[:-2] + ("AA" if state[-2:] != "AA" else "BB")
        )
        assert_problem(await started.finish(tampered), 400, "does not match")
        # the refusal cleared the login cookie: the genuine callback cannot complete it either
        assert browser.cookies.get(LOGIN_COOKIE) is None
        assert_problem(await started.finish(), 400, "No login is in progress")
    assert plane.idp.proxy.hits["/token"] == tokens_before
    assert await plane.session_tokens() == before


async def test_a_replayed_callback_is_refused(plane: Plane) -> None:
    email = f"{plane.stack.unique('replay')}@example.com"
    await invite(plane, email)
    async with browsers(plane) as (browser, idp_browser):
        started = await start_login(browser, idp_browser, login=email)
        first = await started.finish()
        assert first.status_code == 200, first.text
        tokens_before = plane.idp.proxy.hits["/token"]
        issued = await plane.session_tokens()
        # an attacker holding the callback URL and the login cookie tries again
        browser.cookies.set(LOGIN_COOKIE, started.login_cookie, path="/auth/callback")
        assert_problem(await started.finish(), 400, "already completed")
    assert plane.idp.proxy.hits["/token"] == tokens_before
    assert await plane.session_tokens() == issued


async def test_a_reused_code_is_refused_by_the_provider(plane: Plane) -> None:
    email = f"{plane.stack.unique('reuse')}@example.com"
    await invite(plane, email)
    async with browsers(plane) as (browser, idp_browser):
        first = await start_login(browser, idp_browser, login=email)
        assert (await first.finish()).status_code == 200
        issued = await plane.session_tokens()
        # a fresh login in the same browser, answered with the first login's (spent) code
        second = await start_login(browser, idp_browser, login=email)
        old_code = parse_qs(urlsplit(first.callback).query)["code"][0]
        response = await second.finish(with_query(second.callback, code=old_code))
        assert_problem(response, 400, "refused the authorization code", "invalid_grant")
    assert await plane.session_tokens() == issued


async def test_a_code_is_useless_without_the_pkce_verifier_of_its_login(plane: Plane) -> None:
    email = f"{plane.stack.unique('pkce')}@example.com"
    await invite(plane, email)
    async with browsers(plane) as (browser, idp_browser):
        victim = await start_login(browser, idp_browser, login=email)
        victim_code = parse_qs(urlsplit(victim.callback).query)["code"][0]
    # the attacker intercepted the code and replays it into their own login (own state/cookie)
    async with browsers(plane) as (browser, idp_browser):
        attacker = await start_login(browser, idp_browser, login=email)
        response = await attacker.finish(with_query(attacker.callback, code=victim_code))
        assert_problem(response, 400, "invalid_grant")


async def test_refusing_consent_is_401(plane: Plane) -> None:
    before = await plane.session_tokens()
    async with browsers(plane) as (browser, idp_browser):
        started = await start_login(
            browser, idp_browser, login=f"{plane.stack.unique('no')}@example.com", approve=False
        )
        assert "error=access_denied" in started.callback
        assert_problem(await started.finish(), 401, "access_denied")
    assert await plane.session_tokens() == before


async def test_a_response_naming_another_issuer_is_refused(plane: Plane) -> None:
    async with browsers(plane) as (browser, idp_browser):
        started = await start_login(
            browser, idp_browser, login=f"{plane.stack.unique('mix')}@example.com"
        )
        assert parse_qs(urlsplit(started.callback).query)["iss"] == [plane.idp.issuer]
        response = await started.finish(with_query(started.callback, iss="https://evil.example"))
        assert_problem(response, 400, "another issuer")


async def other_clients_id_token(plane: Plane, client: dict[str, Any], login: str) -> str:
    """A real ID token the provider issued to ``client`` (another relying party)."""
    settings = rp_settings(
        plane.idp,
        plane.directory,
        plane.url,
        oidc_client_id=client["client_id"],
        oidc_client_secret=client["client_secret"],
    )
    rp = OidcClient.from_settings(settings)
    try:
        url = await rp.authorization_url(state="s" * 43, nonce="n" * 43, code_verifier="v" * 64)
        async with httpx.AsyncClient(trust_env=False, timeout=15) as idp_browser:
            callback = await browser_login(idp_browser, url, login=login, redirect_prefix=CALLBACK)
        code = parse_qs(urlsplit(callback).query)["code"][0]
        tokens = await rp.exchange_code(code, "v" * 64)
    finally:
        await rp.aclose()
    assert tokens.id_token is not None
    return tokens.id_token


def claims_of(id_token: str) -> dict[str, Any]:
    payload = id_token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


async def test_an_id_token_issued_to_another_client_is_refused(plane: Plane) -> None:
    email = f"{plane.stack.unique('aud')}@example.com"
    await invite(plane, email)
    foreign = await other_clients_id_token(plane, OTHER_RP, email)
    assert claims_of(foreign)["aud"] == OTHER_RP["client_id"]
    before = await plane.session_tokens()
    async with browsers(plane) as (browser, idp_browser):
        started = await start_login(browser, idp_browser, login=email)
        plane.idp.proxy.substitute_id_token = foreign
        assert_problem(await started.finish(), 401, "aud")
    assert await plane.session_tokens() == before


async def test_an_expired_id_token_is_refused(plane: Plane) -> None:
    email = f"{plane.stack.unique('late')}@example.com"
    await invite(plane, email)
    before = await plane.session_tokens()
    async with plane.variant(
        oidc_client_id=SHORT_RP["client_id"],
        oidc_client_secret=SHORT_RP["client_secret"],
        oidc_clock_skew_seconds=0,
    ) as short:
        view = Plane(short, plane.idp, plane.directory, plane.url)
        async with browsers(view) as (browser, idp_browser):
            started = await start_login(browser, idp_browser, login=email)
            # the provider issues 1-second ID tokens to this client; deliver one 2.5 s late
            plane.idp.proxy.token_delay = 2.5
            assert_problem(await started.finish(), 401, "expired")
    assert await plane.session_tokens() == before


async def test_an_id_token_from_another_login_is_refused_by_nonce(plane: Plane) -> None:
    email = f"{plane.stack.unique('nonce')}@example.com"
    await invite(plane, email)
    stolen = await other_clients_id_token(plane, RP, email)  # ours, but for another login
    async with browsers(plane) as (browser, idp_browser):
        started = await start_login(browser, idp_browser, login=email)
        plane.idp.proxy.substitute_id_token = stolen
        assert_problem(await started.finish(), 401, "nonce")


async def test_forged_id_tokens_are_refused(plane: Plane) -> None:
    email = f"{plane.stack.unique('forge')}@example.com"
    await invite(plane, email)
    genuine = await other_clients_id_token(plane, RP, email)
    header, payload, signature = genuine.split(".")
    claims = claims_of(genuine)
    claims["sub"] = "someone-else"
    swapped = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    unsigned_header = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BB")
    forgeries = [
        (f"{header}.{swapped}.{signature}", "signature"),
        (f"{header}.{payload}.{flipped}", "signature"),
        (f"{unsigned_header}.{payload}.", "cannot be verified"),
        ("not-a-jwt", "cannot be verified"),
    ]
    for forged, needle in forgeries:
        async with browsers(plane) as (browser, idp_browser):
            started = await start_login(browser, idp_browser, login=email)
            plane.idp.proxy.substitute_id_token = forged
            assert_problem(await started.finish(), 401, needle)


async def test_wrong_client_credentials_are_a_502_for_the_operator(plane: Plane) -> None:
    async with plane.variant(oidc_client_secret="wrong-secret") as misconfigured:
        view = Plane(misconfigured, plane.idp, plane.directory, plane.url)
        async with browsers(view) as (browser, idp_browser):
            started = await start_login(
                browser, idp_browser, login=f"{plane.stack.unique('op')}@example.com"
            )
            assert_problem(await started.finish(), 502, "client credentials", "invalid_client")


async def test_discovery_is_cached(plane: Plane) -> None:
    async with plane.variant() as fresh:
        client = fresh.client
        before = plane.idp.proxy.hits[DISCOVERY]
        for _ in range(3):
            assert (await client.get("/auth/login")).status_code == 302
        assert plane.idp.proxy.hits[DISCOVERY] == before + 1


async def test_clock_skew_tolerance_accepts_a_slightly_late_id_token(plane: Plane) -> None:
    email = f"{plane.stack.unique('skew')}@example.com"
    await invite(plane, email)
    async with plane.variant(
        oidc_client_id=SHORT_RP["client_id"],
        oidc_client_secret=SHORT_RP["client_secret"],
        oidc_clock_skew_seconds=30,
    ) as tolerant:
        view = Plane(tolerant, plane.idp, plane.directory, plane.url)
        async with browsers(view) as (browser, idp_browser):
            started = await start_login(browser, idp_browser, login=email)
            plane.idp.proxy.token_delay = 2.5  # past exp, within the 30 s tolerance
            response = await started.finish()
            assert response.status_code == 200, response.text


async def test_email_comes_from_userinfo_when_the_id_token_lacks_it(plane: Plane) -> None:
    email = f"{plane.stack.unique('info')}@example.com"
    await invite(plane, email)
    before = plane.idp.proxy.hits["/me"]
    response = await log_in(plane, email)
    assert response.status_code == 200, response.text
    assert response.json()["email"] == email
    assert plane.idp.proxy.hits["/me"] == before + 1  # oidc-provider's userinfo endpoint


async def test_email_in_the_id_token_needs_no_userinfo(plane: Plane) -> None:
    with (
        TokenTamperingProxy() as proxy,
        OidcProvider([RP], issuer=proxy.url, conform_id_token_claims=False) as provider,
    ):
        proxy.upstream = provider.url
        other = IdP(provider, proxy)
        email = f"{plane.stack.unique('idtoken')}@example.com"
        await invite(plane, email)
        async with running(
            rp_settings(other, plane.directory, plane.url, oidc_issuer=other.issuer)
        ) as stack:
            view = Plane(stack, other, plane.directory, plane.url)
            response = await log_in(view, email)
        assert response.status_code == 200, response.text
        assert response.json()["email"] == email
        assert proxy.hits["/me"] == 0
        assert proxy.hits["/token"] == 1


async def test_a_new_subject_cannot_take_over_an_address_already_linked(plane: Plane) -> None:
    stack = plane.stack
    email = f"{stack.unique('owner')}@example.com"
    await invite(plane, email)
    first = await log_in(plane, email)
    assert first.status_code == 200, first.text
    impostor = stack.unique("recycled")
    plane.idp.provider.set_account(impostor, email=email, email_verified=True)
    before = await plane.session_tokens()
    assert_problem(await log_in(plane, impostor), 403, "already belongs to another account")
    assert await stack.count(UserIdentityRow, UserIdentityRow.subject == impostor) == 0
    assert await plane.session_tokens() == before


@pytest.mark.parametrize("invited", [False, True])
async def test_concurrent_first_logins_of_one_person_never_fail(
    plane: Plane, invited: bool
) -> None:
    """Two tabs finishing the first login at once: both succeed, or the slower gets 409.

    Uninvited (allowed domain) they race to create the user; invited they race to link it.
    Several rounds, because which interleaving happens depends on timing.
    """
    stack = plane.stack
    async with plane.variant(oidc_allowed_email_domains="race.example") as racing:
        view = Plane(racing, plane.idp, plane.directory, plane.url)
        for _ in range(3):
            email = f"{stack.unique('twin')}@race.example"
            if invited:
                await invite(plane, email)
            async with browsers(view) as (one, idp_one), browsers(view) as (two, idp_two):
                first = await start_login(one, idp_one, login=email)
                second = await start_login(two, idp_two, login=email)
                responses = await asyncio.gather(first.finish(), second.finish())
            statuses = sorted(r.status_code for r in responses)
            assert statuses in ([200, 200], [200, 409]), [r.text for r in responses]
            assert await stack.count(UserRow, UserRow.email == email) == 1
            assert await stack.count(UserIdentityRow, UserIdentityRow.subject == email) == 1
            user_ids = {r.json()["user_id"] for r in responses if r.status_code == 200}
            assert len(user_ids) == 1


async def test_a_callback_without_iss_is_refused_when_the_provider_sends_it(plane: Plane) -> None:
    async with browsers(plane) as (browser, idp_browser):
        started = await start_login(
            browser, idp_browser, login=f"{plane.stack.unique('noiss')}@example.com"
        )
        parts = urlsplit(started.callback)
        query = {k: v[0] for k, v in parse_qs(parts.query).items() if k != "iss"}
        stripped = urlunsplit(("", "", parts.path, urlencode(query), ""))
        assert_problem(await started.finish(stripped), 400, "lacks the iss parameter")


async def test_client_secrets_are_form_encoded_for_basic_auth(plane: Plane) -> None:
    email = f"{plane.stack.unique('odd')}@example.com"
    await invite(plane, email)
    async with plane.variant(
        oidc_client_id=ODD_RP["client_id"], oidc_client_secret=ODD_RP["client_secret"]
    ) as odd:
        response = await log_in(Plane(odd, plane.idp, plane.directory, plane.url), email)
    assert response.status_code == 200, response.text


async def test_a_public_base_url_with_a_path_prefix(plane: Plane) -> None:
    email = f"{plane.stack.unique('prefix')}@example.com"
    await invite(plane, email)
    async with plane.variant(public_base_url=f"{PUBLIC}/cp") as prefixed:
        view = Plane(prefixed, plane.idp, plane.directory, plane.url)
        async with browsers(view) as (browser, idp_browser):
            started = await start_login(
                browser,
                idp_browser,
                login=email,
                redirect_to="/orgs",
                callback_url=PREFIXED_CALLBACK,
            )
            login_cookie = next(c for c in browser.cookies.jar if c.name == LOGIN_COOKIE)
            assert login_cookie.path == "/cp/auth/callback"
            # a reverse proxy strips /cp before the request reaches the API
            response = await browser.get(
                path_of(started.callback).removeprefix("/cp"),
                headers={"Cookie": f"{LOGIN_COOKIE}={started.login_cookie}"},
            )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"{PUBLIC}/cp/orgs"
    session_cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}=")
    )
    assert "Path=/cp/" in session_cookie


async def test_cookies_are_secure_behind_an_https_public_url(plane: Plane) -> None:
    email = f"{plane.stack.unique('tls')}@example.com"
    await invite(plane, email)
    async with plane.variant(public_base_url="https://testserver") as tls:
        view = Plane(tls, plane.idp, plane.directory, plane.url)
        async with view.browser() as browser, httpx.AsyncClient(trust_env=False) as idp_browser:
            response = await browser.get("/auth/login")
            login_cookie = next(
                c
                for c in response.headers.get_list("set-cookie")
                if c.startswith(f"{LOGIN_COOKIE}=")
            )
            assert "Secure" in login_cookie
            callback = await browser_login(
                idp_browser,
                response.headers["location"],
                login=email,
                redirect_prefix=SECURE_CALLBACK,
            )
            sealed = login_cookie.split(";")[0].split("=", 1)[1]
            # (TLS terminates at a proxy in front of the API; httpx's jar would not send a
            # Secure cookie over http, so the browser's header is written out here)
            finished = await browser.get(
                path_of(callback), headers={"Cookie": f"{LOGIN_COOKIE}={sealed}"}
            )
    assert finished.status_code == 200, finished.text
    session_cookie = next(
        c for c in finished.headers.get_list("set-cookie") if c.startswith(f"{SESSION_COOKIE}=")
    )
    assert "Secure" in session_cookie
    assert "HttpOnly" in session_cookie
