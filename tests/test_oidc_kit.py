"""Self-tests of the OpenID Connect test kit (tests/oidc.py): a real provider, without the app.

A minimal relying party is played here with authlib's OAuth 2.0 core and httpx (authorization
code + PKCE S256, nonce, client_secret_basic) and the ID token is checked with joserfc, so a
failure here is the kit's, not the control plane's.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from authlib.oauth2.rfc6749.parameters import (
    parse_authorization_code_response,
    prepare_grant_uri,
    prepare_token_request,
)
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.oidc import OidcProvider, TokenTamperingProxy, browser_login, proxied_provider

pytestmark = pytest.mark.anyio

REDIRECT_URI = "http://127.0.0.1:9/callback"  # never requested
SCOPE = "openid email profile"
RP: dict[str, Any] = {
    "client_id": "kit-rp",
    "client_secret": "kit-rp-secret",
    "redirect_uris": [REDIRECT_URI],
}
SHORT: dict[str, Any] = {
    "client_id": "kit-short",
    "client_secret": "kit-short-secret",
    "redirect_uris": [REDIRECT_URI],
    "id_token_ttl": 1,
}
PUBLIC: dict[str, Any] = {
    "client_id": "kit-public",
    "token_endpoint_auth_method": "none",
    "redirect_uris": [REDIRECT_URI],
}


@pytest.fixture(scope="module")
def op() -> Iterator[OidcProvider]:
    with OidcProvider(clients=[RP, SHORT, PUBLIC]) as provider:
        yield provider


@pytest.fixture
async def browser() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


async def discover(issuer: str) -> dict[str, Any]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        response = await client.get(f"{issuer}/.well-known/openid-configuration")
        response.raise_for_status()
        metadata: dict[str, Any] = response.json()
        jwks = await client.get(metadata["jwks_uri"])
        jwks.raise_for_status()
        metadata["jwks"] = jwks.json()
        return metadata


class OAuthError(Exception):
    """The token endpoint refused the request; ``error`` is the OAuth error code."""

    def __init__(self, error: str, description: str | None) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error


@dataclass
class RelyingParty:
    """Just enough of an OAuth 2.0 client: authlib's message helpers over an httpx client."""

    client: dict[str, Any]
    http: httpx.AsyncClient

    async def __aenter__(self) -> RelyingParty:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    def create_authorization_url(
        self, endpoint: str, *, nonce: str, code_verifier: str | None = None
    ) -> tuple[str, str]:
        state = secrets.token_urlsafe(24)
        pkce = (
            {
                "code_challenge": create_s256_code_challenge(code_verifier),
                "code_challenge_method": "S256",
            }
            if code_verifier
            else {}
        )
        url: str = prepare_grant_uri(
            endpoint,
            client_id=self.client["client_id"],
            response_type="code",
            redirect_uri=REDIRECT_URI,
            scope=SCOPE,
            state=state,
            nonce=nonce,
            **pkce,
        )
        return url, state

    async def fetch_token(
        self, endpoint: str, *, authorization_response: str, state: str, code_verifier: str
    ) -> dict[str, Any]:
        params = parse_authorization_code_response(authorization_response, state=state)
        secret = self.client.get("client_secret")
        extra = {} if secret else {"client_id": self.client["client_id"]}
        body: str = prepare_token_request(
            "authorization_code",
            code=params["code"],
            redirect_uri=REDIRECT_URI,
            code_verifier=code_verifier,
            **extra,
        )
        response = await self.http.post(
            endpoint,
            content=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            auth=httpx.BasicAuth(self.client["client_id"], secret)
            if secret
            else httpx.USE_CLIENT_DEFAULT,
        )
        answer: dict[str, Any] = response.json()
        if response.status_code != 200:
            raise OAuthError(answer.get("error", "unknown"), answer.get("error_description"))
        return answer


def relying_party(client: dict[str, Any]) -> RelyingParty:
    return RelyingParty(client, httpx.AsyncClient(trust_env=False, timeout=10))


@dataclass
class Authorization:
    callback: str
    code_verifier: str
    nonce: str
    state: str

    @property
    def params(self) -> dict[str, str]:
        return {key: values[0] for key, values in parse_qs(urlsplit(self.callback).query).items()}


async def authorize(
    metadata: dict[str, Any],
    rp: RelyingParty,
    browser: httpx.AsyncClient,
    *,
    login: str,
    approve: bool = True,
) -> Authorization:
    code_verifier = secrets.token_urlsafe(48)
    nonce = secrets.token_urlsafe(16)
    url, state = rp.create_authorization_url(
        metadata["authorization_endpoint"], code_verifier=code_verifier, nonce=nonce
    )
    callback = await browser_login(
        browser, url, login=login, redirect_prefix=REDIRECT_URI, approve=approve
    )
    return Authorization(callback, code_verifier, nonce, state)


async def exchange(
    metadata: dict[str, Any], rp: RelyingParty, authorization: Authorization
) -> dict[str, Any]:
    token: dict[str, Any] = await rp.fetch_token(
        metadata["token_endpoint"],
        authorization_response=authorization.callback,
        state=authorization.state,
        code_verifier=authorization.code_verifier,
    )
    return token


def verified_claims(
    metadata: dict[str, Any], id_token: str, *, client_id: str, nonce: str, leeway: int = 0
) -> dict[str, Any]:
    token = jwt.decode(id_token, KeySet.import_key_set(metadata["jwks"]), algorithms=["RS256"])
    jwt.JWTClaimsRegistry(
        leeway=leeway,
        iss={"essential": True, "value": metadata["issuer"]},
        aud={"essential": True, "value": client_id},
        nonce={"essential": True, "value": nonce},
        sub={"essential": True},
        exp={"essential": True},
        iat={"essential": True},
    ).validate(token.claims)
    return token.claims


def knobs(proxy: TokenTamperingProxy) -> tuple[float, str | None]:
    return proxy.token_delay, proxy.substitute_id_token


async def test_code_flow_issues_a_signed_id_token(
    op: OidcProvider, browser: httpx.AsyncClient
) -> None:
    metadata = await discover(op.issuer)
    assert metadata["issuer"] == op.issuer
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    async with relying_party(RP) as rp:
        authorization = await authorize(metadata, rp, browser, login="alice@example.com")
        params = authorization.params
        assert params["state"] == authorization.state
        assert params["iss"] == op.issuer
        assert params["code"]

        token = await exchange(metadata, rp, authorization)

    assert token["token_type"].lower() == "bearer"
    assert token["access_token"]
    claims = verified_claims(
        metadata, token["id_token"], client_id=RP["client_id"], nonce=authorization.nonce
    )
    assert claims["sub"] == "alice@example.com"
    assert claims["email"] == "alice@example.com"
    assert claims["email_verified"] is True
    assert claims["name"] == "alice@example.com"
    assert claims["exp"] - claims["iat"] == 3600


async def test_login_id_without_at_gets_an_example_com_email(
    op: OidcProvider, browser: httpx.AsyncClient
) -> None:
    metadata = await discover(op.issuer)
    async with relying_party(PUBLIC) as rp:
        authorization = await authorize(metadata, rp, browser, login="bob")
        token = await exchange(metadata, rp, authorization)
    claims = verified_claims(
        metadata, token["id_token"], client_id=PUBLIC["client_id"], nonce=authorization.nonce
    )
    assert (claims["sub"], claims["email"], claims["name"]) == ("bob", "bob@example.com", "bob")


async def test_wrong_code_verifier_is_invalid_grant(
    op: OidcProvider, browser: httpx.AsyncClient
) -> None:
    metadata = await discover(op.issuer)
    async with relying_party(RP) as rp:
        authorization = await authorize(metadata, rp, browser, login="carol")
        authorization.code_verifier = secrets.token_urlsafe(48)
        with pytest.raises(OAuthError) as refused:
            await exchange(metadata, rp, authorization)
    assert refused.value.error == "invalid_grant"


async def test_pkce_is_required_of_confidential_clients(
    op: OidcProvider, browser: httpx.AsyncClient
) -> None:
    metadata = await discover(op.issuer)
    async with relying_party(RP) as rp:
        url, _ = rp.create_authorization_url(metadata["authorization_endpoint"], nonce="n")
    callback = await browser_login(browser, url, login="dave", redirect_prefix=REDIRECT_URI)
    params = parse_qs(urlsplit(callback).query)
    assert params["error"] == ["invalid_request"]
    assert "PKCE" in params["error_description"][0]


async def test_a_code_is_single_use(op: OidcProvider, browser: httpx.AsyncClient) -> None:
    metadata = await discover(op.issuer)
    async with relying_party(RP) as rp:
        authorization = await authorize(metadata, rp, browser, login="erin")
        await exchange(metadata, rp, authorization)
        with pytest.raises(OAuthError) as refused:
            await exchange(metadata, rp, authorization)
    assert refused.value.error == "invalid_grant"


async def test_per_client_id_token_ttl(op: OidcProvider, browser: httpx.AsyncClient) -> None:
    metadata = await discover(op.issuer)
    async with relying_party(SHORT) as rp:
        authorization = await authorize(metadata, rp, browser, login="frank")
        token = await exchange(metadata, rp, authorization)
    # A 1-second token may be past its expiry by the time a loaded machine checks it: the
    # point here is its lifetime, so the check tolerates the delay.
    claims = verified_claims(
        metadata,
        token["id_token"],
        client_id=SHORT["client_id"],
        nonce=authorization.nonce,
        leeway=60,
    )
    assert claims["exp"] - claims["iat"] == 1


async def test_set_account_overrides_claims(op: OidcProvider, browser: httpx.AsyncClient) -> None:
    op.set_account("grace", email="grace@corp.test", email_verified=False)
    metadata = await discover(op.issuer)
    async with relying_party(RP) as rp:
        authorization = await authorize(metadata, rp, browser, login="grace")
        token = await exchange(metadata, rp, authorization)
    claims = verified_claims(
        metadata, token["id_token"], client_id=RP["client_id"], nonce=authorization.nonce
    )
    assert claims["email"] == "grace@corp.test"
    assert claims["email_verified"] is False
    assert claims["name"] == "grace"


async def test_refusing_consent_is_access_denied(
    op: OidcProvider, browser: httpx.AsyncClient
) -> None:
    metadata = await discover(op.issuer)
    async with relying_party(RP) as rp:
        authorization = await authorize(metadata, rp, browser, login="heidi", approve=False)
    params = authorization.params
    assert params["error"] == "access_denied"
    assert params["state"] == authorization.state
    assert "code" not in params


async def test_a_second_login_in_the_same_browser_skips_the_forms(
    op: OidcProvider, browser: httpx.AsyncClient
) -> None:
    metadata = await discover(op.issuer)
    async with relying_party(RP) as rp:
        first = await authorize(metadata, rp, browser, login="ivan")
        second = await authorize(metadata, rp, browser, login="someone-else")
        token = await exchange(metadata, rp, second)
    assert first.params["code"] != second.params["code"]
    claims = verified_claims(
        metadata, token["id_token"], client_id=RP["client_id"], nonce=second.nonce
    )
    assert claims["sub"] == "ivan"


async def test_proxy_forwards_the_flow_and_tampers_with_tokens(
    browser: httpx.AsyncClient,
) -> None:
    with proxied_provider([RP]) as (op, proxy):
        assert op.issuer == proxy.url != op.url
        metadata = await discover(op.issuer)
        for endpoint in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            assert metadata[endpoint].startswith(f"{proxy.url}/")

        async with relying_party(RP) as rp:
            # Several Set-Cookie headers on one response survive the proxy.
            url, _ = rp.create_authorization_url(
                metadata["authorization_endpoint"],
                code_verifier=secrets.token_urlsafe(48),
                nonce="n",
            )
            async with httpx.AsyncClient(trust_env=False, timeout=10) as probe:
                start = await probe.get(url)
            assert start.status_code == httpx.codes.SEE_OTHER
            cookies = start.headers.get_list("set-cookie")
            assert len(cookies) >= 4, cookies
            assert {cookie.split("=", 1)[0] for cookie in cookies} >= {
                "_interaction",
                "_interaction.sig",
                "_interaction_resume",
                "_interaction_resume.sig",
            }

            # A faithful token response first ...
            authorization = await authorize(metadata, rp, browser, login="judy")
            token = await exchange(metadata, rp, authorization)
            verified_claims(
                metadata, token["id_token"], client_id=RP["client_id"], nonce=authorization.nonce
            )
            assert proxy.hits["/token"] == 1
            assert proxy.hits["/auth"] >= 2
            assert sum(n for path, n in proxy.hits.items() if path.startswith("/interaction/")) >= 2

            # ... then a delayed one with a substituted ID token.
            proxy.token_delay = 0.3
            proxy.substitute_id_token = "not.a.jwt"
            authorization = await authorize(metadata, rp, browser, login="judy")
            started = time.monotonic()
            token = await exchange(metadata, rp, authorization)
            assert time.monotonic() - started >= 0.3
            assert token["id_token"] == "not.a.jwt"
            assert token["access_token"]
            assert proxy.hits["/token"] == 2

            proxy.reset()
            assert knobs(proxy) == (0, None)
            assert not proxy.hits


def test_startup_failures_are_reported_with_the_provider_stderr() -> None:
    provider = OidcProvider(clients=[{**RP, "id_token_ttl": 0}])
    try:
        with pytest.raises(RuntimeError, match="exited with 2") as failed:
            provider.start()
    finally:
        provider.stop()
    assert "id_token_ttl of client kit-rp must be a positive integer" in str(failed.value)
    assert not provider.running
    with pytest.raises(RuntimeError, match="not running"):
        _ = provider.url


def test_proxy_without_upstream_is_bad_gateway() -> None:
    with TokenTamperingProxy() as proxy:
        response = httpx.get(f"{proxy.url}/anything", trust_env=False, timeout=10)
    assert response.status_code == httpx.codes.BAD_GATEWAY
