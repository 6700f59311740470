"""The OpenID Connect relying party: discovery, authorization URL, code exchange, ID token checks.

OAuth 2.0 message handling comes from authlib's transport-agnostic core (PKCE challenge,
authorization URL, token request body, client authentication); JOSE (JWKS, JWS signature and JWT
claims) from joserfc. HTTP goes through one ``httpx.AsyncClient``: authlib's own httpx integration
is deprecated in favour of another HTTP package, so only its core is used.

Every failure is a :class:`~controlplane.errors.DomainError`:

- the provider is unreachable, answers 5xx or a malformed document, or refuses our client
  credentials: :class:`BadGateway` (502), which the operator must fix;
- the authorization code is refused (expired, reused, wrong PKCE verifier): :class:`BadRequest`;
- the ID token is unsigned, signed by an unknown key, or its ``iss``/``aud``/``exp``/``nonce`` is
  wrong: :class:`Unauthorized`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus

import httpx
import msgspec
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri, prepare_token_request
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidKeyIdError,
    JoseError,
)
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from controlplane.errors import BadGateway, BadRequest, Unauthorized

if TYPE_CHECKING:
    from controlplane.settings import Settings

__all__ = ["IdentityClaims", "OidcClient", "ProviderMetadata"]

logger = logging.getLogger("byteor.controlplane.auth")

#: Largest document accepted from the provider (discovery, JWKS, token and userinfo responses).
MAX_DOCUMENT_BYTES = 1024 * 1024
#: Asymmetric signature algorithms accepted on ID tokens ("none" and HMAC never are).
SIGNING_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
#: An unknown ``kid`` refreshes the JWKS at most this often (the provider may have rotated keys).
JWKS_REFRESH_MIN_SECONDS = 30.0
#: OAuth error codes meaning our client registration is wrong, not the user's login.
CLIENT_ERRORS = frozenset({"invalid_client", "unauthorized_client", "unsupported_grant_type"})


class ProviderMetadata(msgspec.Struct, frozen=True):
    """The parts of the discovery document (OpenID Connect Discovery 1.0) the login uses."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None = None
    id_token_signing_alg_values_supported: list[str] = msgspec.field(
        default_factory=lambda: ["RS256"]
    )
    token_endpoint_auth_methods_supported: list[str] = msgspec.field(
        default_factory=lambda: ["client_secret_basic"]
    )
    code_challenge_methods_supported: list[str] | None = None
    #: RFC 9207: the provider names itself (``iss``) in every authorization response.
    authorization_response_iss_parameter_supported: bool = False


class TokenResponse(msgspec.Struct):
    id_token: str | None = None
    access_token: str | None = None
    token_type: str | None = None


class ProviderError(msgspec.Struct):
    error: str = "unknown_error"
    error_description: str | None = None


@dataclass(frozen=True, slots=True)
class IdentityClaims:
    """Who logged in, from a validated ID token (and the userinfo endpoint when needed)."""

    issuer: str
    subject: str
    email: str | None
    email_verified: bool
    name: str | None


@dataclass(slots=True)
class _Cached:
    value: Any
    fetched_at: float


@dataclass
class OidcClient:
    """One relying party for the configured issuer; caches discovery and JWKS."""

    settings: Settings
    http: httpx.AsyncClient
    _metadata: _Cached | None = None
    _jwks: _Cached | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def from_settings(cls, settings: Settings) -> OidcClient:
        http = httpx.AsyncClient(
            timeout=settings.oidc_http_timeout_seconds,
            follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": "byteor-controlplane"},
        )
        return cls(settings=settings, http=http)

    async def aclose(self) -> None:
        await self.http.aclose()

    @property
    def issuer(self) -> str:
        assert self.settings.oidc_issuer is not None  # noqa: S101 - only built when configured
        return self.settings.oidc_issuer

    @property
    def client_id(self) -> str:
        assert self.settings.oidc_client_id is not None  # noqa: S101 - only built when configured
        return self.settings.oidc_client_id

    @property
    def redirect_uri(self) -> str:
        return f"{self.settings.public_base_url}/auth/callback"

    # -- HTTP ---------------------------------------------------------------------------------

    async def _request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Call the provider; transport failures and oversized answers are a 502."""
        try:
            async with self.http.stream(method, url, **kwargs) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body.extend(chunk)
                    if len(body) > MAX_DOCUMENT_BYTES:
                        raise BadGateway("The identity provider sent an oversized response")
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            logger.warning("identity provider request failed: %s %s: %s", method, url, exc)
            raise BadGateway(
                "The identity provider could not be reached; try again later"
            ) from None
        return httpx.Response(response.status_code, headers=response.headers, content=bytes(body))

    async def _get_document(self, url: str, what: str) -> bytes:
        response = await self._request("GET", url)
        if response.status_code != 200:
            logger.warning("identity provider %s answered %s", what, response.status_code)
            raise BadGateway(f"The identity provider's {what} answered {response.status_code}")
        return response.content

    # -- discovery and keys -------------------------------------------------------------------

    def _fresh(self, cached: _Cached | None) -> Any:
        """The cached value while it is younger than the discovery TTL, else ``None``."""
        if cached is None:
            return None
        if time.monotonic() - cached.fetched_at >= self.settings.oidc_discovery_ttl_seconds:
            return None
        return cached.value

    async def metadata(self) -> ProviderMetadata:
        """The issuer's discovery document, cached for ``oidc_discovery_ttl_seconds``."""
        cached: ProviderMetadata | None = self._fresh(self._metadata)
        if cached is not None:
            return cached
        async with self._lock:
            cached = self._fresh(self._metadata)
            if cached is not None:
                return cached
            url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
            raw = await self._get_document(url, "discovery document")
            try:
                metadata = msgspec.json.decode(raw, type=ProviderMetadata)
            except msgspec.DecodeError as exc:
                raise BadGateway(
                    f"The identity provider's discovery document is invalid: {exc}"
                ) from None
            if metadata.issuer != self.issuer:
                # OpenID Connect Discovery 1.0 §4.3: the issuer must match exactly.
                raise BadGateway(
                    f"The discovery document names issuer {metadata.issuer!r}, "
                    f"not the configured {self.issuer!r}"
                )
            self._metadata = _Cached(metadata, time.monotonic())
            self._jwks = None
            return metadata

    async def _key_set(self, *, refresh: bool = False) -> KeySet:
        metadata = await self.metadata()
        async with self._lock:
            cached = self._jwks
            fresh: KeySet | None = None if refresh else self._fresh(cached)
            if fresh is not None:
                return fresh
            if (
                cached is not None
                and refresh
                and time.monotonic() - cached.fetched_at < JWKS_REFRESH_MIN_SECONDS
            ):
                stale: KeySet = cached.value
                return stale
            raw = await self._get_document(metadata.jwks_uri, "JWKS")
            try:
                document = msgspec.json.decode(raw)
                keys = KeySet.import_key_set(document)
            except (msgspec.DecodeError, JoseError, ValueError, TypeError, KeyError) as exc:
                raise BadGateway(f"The identity provider's JWKS is invalid: {exc}") from None
            self._jwks = _Cached(keys, time.monotonic())
            return keys

    # -- the flow -----------------------------------------------------------------------------

    async def authorization_url(self, *, state: str, nonce: str, code_verifier: str) -> str:
        """Where to send the browser: the authorization endpoint with PKCE (S256)."""
        metadata = await self.metadata()
        methods = metadata.code_challenge_methods_supported
        if methods is not None and "S256" not in methods:
            raise BadGateway("The identity provider does not support PKCE with S256")
        url: str = prepare_grant_uri(
            metadata.authorization_endpoint,
            client_id=self.client_id,
            response_type="code",
            redirect_uri=self.redirect_uri,
            scope=self.settings.oidc_scopes,
            state=state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(code_verifier),
            code_challenge_method="S256",
        )
        return url

    async def exchange_code(self, code: str, code_verifier: str) -> TokenResponse:
        """Redeem an authorization code at the token endpoint (with the PKCE verifier)."""
        metadata = await self.metadata()
        secret = self.settings.oidc_client_secret
        params: dict[str, str] = {"code_verifier": code_verifier}
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        auth: httpx.BasicAuth | None = None
        if secret is not None:
            # client_secret_basic: RFC 6749 §2.3.1 form-encodes both parts before Basic auth.
            auth = httpx.BasicAuth(
                quote_plus(self.client_id), quote_plus(secret.get_secret_value())
            )
        else:
            params["client_id"] = self.client_id
        body: str = prepare_token_request(
            "authorization_code", code=code, redirect_uri=self.redirect_uri, **params
        )
        response = await self._request(
            "POST", metadata.token_endpoint, content=body, headers=headers, auth=auth
        )
        if response.status_code != 200:
            self._raise_token_error(response)
        try:
            tokens = msgspec.json.decode(response.content, type=TokenResponse)
        except msgspec.DecodeError:
            raise BadGateway("The identity provider's token response is not valid JSON") from None
        if not tokens.id_token:
            raise BadGateway("The identity provider returned no ID token (is 'openid' a scope?)")
        return tokens

    @staticmethod
    def _raise_token_error(response: httpx.Response) -> None:
        try:
            error = msgspec.json.decode(response.content, type=ProviderError)
        except msgspec.DecodeError:
            error = ProviderError()
        described = f"{error.error}" + (
            f" ({error.error_description})" if error.error_description else ""
        )
        if response.status_code >= 500:
            raise BadGateway(f"The identity provider's token endpoint failed: {described}")
        if error.error in CLIENT_ERRORS:
            logger.error("the identity provider refused this client: %s", described)
            raise BadGateway(
                f"The identity provider refused the control plane's client credentials: {described}"
            )
        raise BadRequest(
            f"The identity provider refused the authorization code: {described}; "
            "start again at /auth/login"
        )

    async def validate_id_token(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        """Check the ID token's signature against the issuer's JWKS, then iss, aud, exp, nonce."""
        metadata = await self.metadata()
        algorithms = [
            alg
            for alg in metadata.id_token_signing_alg_values_supported
            if alg in SIGNING_ALGORITHMS
        ] or ["RS256"]
        keys = await self._key_set()
        try:
            try:
                token = jwt.decode(id_token, keys, algorithms=algorithms)
            except InvalidKeyIdError:
                keys = await self._key_set(refresh=True)
                token = jwt.decode(id_token, keys, algorithms=algorithms)
        except BadSignatureError:
            raise Unauthorized("The ID token's signature does not verify", error=None) from None
        except (ValueError, JoseError) as exc:
            raise Unauthorized(f"The ID token cannot be verified: {exc}", error=None) from None
        claims = dict(token.claims)
        self._check_claims(claims, nonce)
        return claims

    def _check_claims(self, claims: dict[str, Any], nonce: str) -> None:
        leeway = self.settings.oidc_clock_skew_seconds
        # Checked in this order, each on just its claims, so the error names the first problem:
        # who issued it, for whom, whether it is still valid, and whether it is this login's.
        steps: list[tuple[tuple[str, ...], JWTClaimsRegistry]] = [
            (("iss",), JWTClaimsRegistry(iss={"essential": True, "value": self.issuer})),
            (("aud",), JWTClaimsRegistry(aud={"essential": True, "value": self.client_id})),
            (
                ("exp", "iat", "nbf"),
                JWTClaimsRegistry(leeway=leeway, exp={"essential": True}, iat={"essential": True}),
            ),
            (("nonce",), JWTClaimsRegistry(nonce={"essential": True, "value": nonce})),
            (("sub",), JWTClaimsRegistry(sub={"essential": True})),
        ]
        for names, registry in steps:
            try:
                registry.validate({k: claims[k] for k in names if k in claims})
            except ExpiredTokenError:
                raise Unauthorized("The ID token has expired", error=None) from None
            except JoseError as exc:
                raise Unauthorized(
                    f"The ID token is not for this login: {exc.description}", error=None
                ) from None
        audience = claims["aud"]
        azp = claims.get("azp")
        several = isinstance(audience, list) and len(audience) > 1
        if (several or azp is not None) and azp != self.client_id:
            # OpenID Connect Core §3.1.3.7 (4, 5): azp, when present or needed, must be us.
            raise Unauthorized("The ID token was issued to another client (azp)", error=None)
        if not isinstance(claims["sub"], str) or not 0 < len(claims["sub"]) <= 255:
            raise Unauthorized("The ID token's sub claim is not a usable identifier", error=None)

    async def identity(self, tokens: TokenResponse, claims: dict[str, Any]) -> IdentityClaims:
        """The person behind validated ``claims``; asks userinfo when the e-mail is not in them."""
        merged = dict(claims)
        if "email" not in merged and tokens.access_token:
            metadata = await self.metadata()
            if metadata.userinfo_endpoint:
                merged.update(await self._userinfo(metadata.userinfo_endpoint, tokens, claims))
        email = merged.get("email")
        verified = merged.get("email_verified")
        name = merged.get("name")
        return IdentityClaims(
            issuer=self.issuer,
            subject=str(claims["sub"]),
            email=_normalise_email(email),
            email_verified=verified is True or verified == "true",
            name=name[:128] if isinstance(name, str) and name.strip() else None,
        )

    async def _userinfo(
        self, url: str, tokens: TokenResponse, claims: dict[str, Any]
    ) -> dict[str, Any]:
        response = await self._request(
            "GET", url, headers={"Authorization": f"Bearer {tokens.access_token}"}
        )
        if response.status_code != 200:
            raise BadGateway(f"The identity provider's userinfo answered {response.status_code}")
        try:
            info = msgspec.json.decode(response.content)
        except msgspec.DecodeError:
            raise BadGateway("The identity provider's userinfo is not JSON") from None
        if not isinstance(info, dict) or info.get("sub") != claims["sub"]:
            # OpenID Connect Core §5.3.2: the userinfo sub must match the ID token's.
            raise Unauthorized("The userinfo response is for another subject", error=None)
        return {k: v for k, v in info.items() if k in ("email", "email_verified", "name")}


def _normalise_email(value: object) -> str | None:
    """An address as users are stored: trimmed, ASCII letters lowercased (never Unicode-folded)."""
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    return value.lower() if value.isascii() else value
