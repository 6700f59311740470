"""``/auth/login``, ``/auth/callback`` and ``/auth/logout``: OpenID Connect login for people.

The flow is the authorization code flow with PKCE (S256) against the issuer configured by
``BYTEOR_CLOUD_OIDC_*``. The callback answers the session token as JSON (for API clients and
command-line tools) and sets it as an HttpOnly cookie (for browsers); with ``redirect_to`` it
answers 303 to that path instead of 200.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import QueryParameter
from litestar.response import Redirect
from sqlalchemy.exc import IntegrityError

from controlplane.auth import login
from controlplane.auth.login import LOGIN_COOKIE, SESSION_COOKIE
from controlplane.auth.middleware import check_same_origin, presented_token
from controlplane.auth.secrets import TokenKind
from controlplane.auth.service import authenticate_bearer
from controlplane.deps import DbSession
from controlplane.errors import (
    BadRequest,
    Conflict,
    DomainError,
    ServiceUnavailable,
    Unauthorized,
)
from shared.resources import LoginSession

if TYPE_CHECKING:
    from controlplane.auth.oidc import OidcClient
    from controlplane.settings import Settings
    from controlplane.signing.kek import KeyEncryptionKey

__all__ = ["LoginController"]

#: Provider error codes meaning the person did not (or could not) authenticate.
NOT_AUTHENTICATED = frozenset(
    {
        "access_denied",
        "login_required",
        "consent_required",
        "interaction_required",
        "account_selection_required",
    }
)
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache", "Referrer-Policy": "no-referrer"}


def _settings(request: Request[Any, Any, Any]) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _oidc(request: Request[Any, Any, Any]) -> OidcClient:
    client: OidcClient | None = request.app.state.oidc
    if client is None:
        raise ServiceUnavailable(
            "Login is not configured on this server: set BYTEOR_CLOUD_OIDC_ISSUER, "
            "BYTEOR_CLOUD_OIDC_CLIENT_ID (and _OIDC_CLIENT_SECRET) and BYTEOR_CLOUD_PUBLIC_BASE_URL; "
            "meanwhile use API tokens"
        )
    return client


def base_path(settings: Settings) -> str:
    """The path prefix of the public base URL (behind a reverse proxy), without a trailing /."""
    return urlsplit(settings.public_base_url or "").path.rstrip("/")


def _secure(settings: Settings) -> bool:
    return (settings.public_base_url or "").startswith("https://")


def _login_cookie(settings: Settings, value: str, max_age: int) -> Cookie:
    return Cookie(
        key=LOGIN_COOKIE,
        value=value,
        max_age=max_age,
        path=f"{base_path(settings)}/auth/callback",
        httponly=True,
        secure=_secure(settings),
        samesite="lax",  # sent on the provider's top-level redirect back, never cross-site POSTs
    )


def session_cookie(settings: Settings, value: str, max_age: int) -> Cookie:
    return Cookie(
        key=SESSION_COOKIE,
        value=value,
        max_age=max_age,
        path=f"{base_path(settings)}/",
        httponly=True,
        secure=_secure(settings),
        samesite="lax",
    )


def _printable(value: str, limit: int = 200) -> str:
    return "".join(c for c in value if c.isprintable())[:limit]


class LoginController(Controller):
    path = "/auth"
    tags = ["identity"]

    @get(
        "/login",
        summary="Start an OpenID Connect login; redirects (302) to the identity provider",
        opt={"exclude_from_auth": True},
        security=[],
        status_code=302,
        description=(
            "Creates state, nonce and a PKCE verifier, keeps them in a short-lived sealed "
            "HttpOnly cookie and redirects to the issuer's authorization endpoint. 503 when "
            "login is not configured."
        ),
    )
    async def start_login(
        self,
        request: Request[Any, Any, Any],
        redirect_to: Annotated[
            str | None,
            QueryParameter(
                max_length=login.MAX_REDIRECT_LENGTH,
                description="a path on this server to return to after the login (not a URL)",
            ),
        ] = None,
    ) -> Redirect:
        oidc = _oidc(request)
        settings = _settings(request)
        kek: KeyEncryptionKey = request.app.state.kek
        flow = login.new_flow(settings, login.safe_redirect(redirect_to))
        url = await oidc.authorization_url(
            state=flow.state, nonce=flow.nonce, code_verifier=flow.code_verifier
        )
        cookie = _login_cookie(settings, login.seal_flow(kek, flow), settings.login_timeout_seconds)
        return Redirect(path=url, status_code=302, headers=NO_STORE, cookies=[cookie])

    @get(
        "/callback",
        summary="Finish the login: exchange the code, verify the ID token, issue a session token",
        opt={"exclude_from_auth": True, "transaction": "write"},
        security=[],
        description=(
            "Checks state against the login cookie (once), redeems the code with the PKCE "
            "verifier, verifies the ID token (JWKS signature, iss, aud, exp, nonce), links or "
            "creates the user by subject or verified e-mail and returns a `byteor_ses_` session "
            "token, shown once, also set as an HttpOnly cookie. 303 to redirect_to when the "
            "login asked for it."
        ),
    )
    async def finish_login(
        self,
        request: Request[Any, Any, Any],
        session: DbSession,
        code: Annotated[str | None, QueryParameter(max_length=4096)] = None,
        oauth_state: Annotated[
            str | None, QueryParameter(name="state", max_length=512, description="OAuth state")
        ] = None,
        error: Annotated[str | None, QueryParameter(max_length=256)] = None,
        error_description: Annotated[str | None, QueryParameter(max_length=1024)] = None,
        iss: Annotated[
            str | None,
            QueryParameter(max_length=512, description="the issuer (RFC 9207), when sent"),
        ] = None,
    ) -> Response[LoginSession]:
        oidc = _oidc(request)
        settings = _settings(request)
        forget_login = _login_cookie(settings, "", 0)
        try:
            sealed = request.cookies.get(LOGIN_COOKIE)
            if not sealed:
                raise BadRequest(
                    "No login is in progress in this browser (the login cookie is missing or "
                    "expired); start at /auth/login"
                )
            flow = login.open_flow(request.app.state.kek, sealed)
            if not oauth_state:
                raise BadRequest("The callback carries no state; start again at /auth/login")
            if not login.states_match(oauth_state, flow.state):
                raise BadRequest(
                    "The callback's state does not match this browser's login; "
                    "start again at /auth/login"
                )
            await login.consume_state(session, flow)
            await _check_issuer(oidc, iss)
            if error:
                described = _printable(error, 64) + (
                    f" ({_printable(error_description)})" if error_description else ""
                )
                if error in NOT_AUTHENTICATED:
                    raise Unauthorized(f"The identity provider did not log you in: {described}")
                raise BadRequest(f"The identity provider refused the login: {described}")
            if not code:
                raise BadRequest("The callback carries no authorization code")
            tokens = await oidc.exchange_code(code, flow.code_verifier)
            assert tokens.id_token is not None  # noqa: S101 - exchange_code checks it
            claims = await oidc.validate_id_token(tokens.id_token, nonce=flow.nonce)
            identity = await oidc.identity(tokens, claims)
            try:
                signed_in = await login.sign_in(session, settings, identity)
                row, secret = await login.issue_session(session, settings, signed_in)
            except IntegrityError:
                # Two first logins of one person at once (double click, two tabs), or an
                # invitation racing the login: the other one won; this one may simply retry.
                await session.rollback()
                raise Conflict(
                    "Another login for this person finished at the same time; log in again"
                ) from None
        except DomainError as exc:
            exc.headers = {
                **exc.headers,
                **NO_STORE,
                "Set-Cookie": forget_login.to_header(header=""),
            }
            raise
        assert row.expires_at is not None  # noqa: S101 - sessions always expire
        body = LoginSession(
            token=secret.token,
            token_id=row.id,
            expires_at=row.expires_at,
            user_id=signed_in.user_id,
            email=signed_in.email,
            name=signed_in.name,
            new_user=signed_in.created,
            redirect_to=flow.redirect_to,
        )
        headers = dict(NO_STORE)
        if flow.redirect_to is not None:
            # redirect_to is a path of this API, so it lives under the public base URL's path.
            headers["Location"] = f"{settings.public_base_url}{flow.redirect_to}"
        return Response(
            content=body,
            status_code=303 if flow.redirect_to is not None else 200,
            headers=headers,
            cookies=[
                session_cookie(settings, secret.token, settings.session_ttl_seconds),
                forget_login,
            ],
        )

    @post(
        "/logout",
        summary="Log out: revoke the presented session token and clear the session cookie",
        description=(
            "Takes the session as `Authorization: Bearer byteor_ses_...` or as the "
            "`byteor_session` cookie (same-origin requests only). A stale cookie (expired or "
            "revoked session) is still cleared. API tokens are revoked at /api/v1/tokens instead."
        ),
        opt={"exclude_from_auth": True},
        security=[{"bearer": []}, {"session_cookie": []}],
        status_code=204,
    )
    async def logout(self, request: Request[Any, Any, Any], session: DbSession) -> Response[None]:
        settings = _settings(request)
        done = Response(
            content=None,
            status_code=204,
            headers=NO_STORE,
            cookies=[session_cookie(settings, "", 0)],
        )
        if "authorization" in request.headers:
            principal = await authenticate_bearer(session, presented_token(request))
            if not principal.session:
                raise BadRequest(
                    "Logout ends a login session (a byteor_ses_ token); "
                    "revoke an API token with DELETE /api/v1/tokens/{token_id}"
                )
            await login.end_session(session, principal.user_id, principal.token_id)
            return done
        cookie = request.cookies.get(SESSION_COOKIE)
        if not cookie:
            raise Unauthorized(
                "Nothing to log out: send the session as Authorization: Bearer <token> "
                "or as the byteor_session cookie",
                error=None,
            )
        check_same_origin(request)
        if TokenKind.of(cookie) is TokenKind.SESSION:
            try:
                principal = await authenticate_bearer(session, cookie)
            except Unauthorized:
                return done  # already expired or revoked: only the cookie needs clearing
            await login.end_session(session, principal.user_id, principal.token_id)
        return done


async def _check_issuer(oidc: OidcClient, iss: str | None) -> None:
    """RFC 9207: the response names who sent it; another issuer is a mix-up attack."""
    if iss is None:
        if (await oidc.metadata()).authorization_response_iss_parameter_supported:
            raise BadRequest("The callback lacks the iss parameter its provider always sends")
        return
    if iss != oidc.issuer:
        raise BadRequest("The callback comes from another issuer than the configured one")
