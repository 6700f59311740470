"""Authenticates every request to a non-excluded route before its body is read.

Routes opt out with ``opt={"exclude_from_auth": True}`` (health, schema). The credential kind a
route accepts is ``opt["credential"]``: ``"bearer"`` (default; API and session tokens),
``"enrollment"`` (checked and consumed by the enroll service) or ``"agent"`` (an agent key, which
must belong to the ``{agent_id}`` in the path (else 401) and carry ``opt["scope"]`` (else 403)).
A token of another kind is a 401.

Browsers that logged in at ``/auth/callback`` may instead send the ``byteor_session`` cookie (a
session token only) on bearer routes. A cookie is sent by the browser on its own, so a request it
authenticates that changes anything (not GET/HEAD/OPTIONS) must come from this origin: its
``Origin`` must be the public base URL's (or ``Sec-Fetch-Site: same-origin``), else 403.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from controlplane.agents.keys import authenticate_agent_key
from controlplane.auth.login import SESSION_COOKIE
from controlplane.auth.principal import AgentPrincipal, EnrollmentCredential
from controlplane.auth.secrets import TokenKind, digest_token
from controlplane.auth.service import authenticate_bearer
from controlplane.db.scoped import authentication_read, close_request_session
from controlplane.errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection
    from litestar.types import Receive, Scope, Send

    from controlplane.agents.keycache import AgentKeyCache
    from controlplane.db import Database
    from controlplane.settings import Settings

__all__ = ["AuthenticationMiddleware"]

BEARER_KINDS = frozenset({TokenKind.PERSONAL, TokenKind.SESSION})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def presented_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The bearer token of the ``Authorization`` header, or a 401 saying what is wrong."""
    header = connection.headers.get("authorization")
    if not header:
        raise Unauthorized(
            "Authentication required: send Authorization: Bearer <token>", error=None
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization header must be: Bearer <token>", error="invalid_request")
    return token


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_same_origin(connection: ASGIConnection[Any, Any, Any, Any]) -> None:
    """Refuse a cookie-authenticated change that a browser sent on behalf of another site."""
    if connection.scope.get("method", "GET") in SAFE_METHODS:
        return
    settings: Settings = connection.app.state.settings
    origin = connection.headers.get("origin")
    if origin is not None and settings.public_base_url is not None:
        if _origin(origin) == _origin(settings.public_base_url):
            return
    elif origin is None and connection.headers.get("sec-fetch-site") == "same-origin":
        return
    raise Forbidden(
        "Cross-site request refused: a change authenticated by the session cookie must come "
        "from this site's pages; API clients send Authorization: Bearer <token>"
    )


class AuthenticationMiddleware(AbstractAuthenticationMiddleware):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Owns the request's one database session (shared by authentication and the handler).
        try:
            await super().__call__(scope, receive, send)
        finally:
            await close_request_session(scope)

    @staticmethod
    async def _agent(
        connection: ASGIConnection[Any, Any, Any, Any], database: Database, token: str
    ) -> AgentPrincipal:
        """The agent of an agent key: from the key cache, else from the database."""
        cache: AgentKeyCache = connection.app.state.agent_keys
        digest = digest_token(token)
        agent = cache.get(digest)
        if agent is None and cache.expired(digest):
            await cache.refresh()  # the sweep is late: one batched read for every entry
            agent = cache.get(digest)
        if agent is None:
            async with authentication_read(connection.scope, database) as session:
                # Stamped once the connection is in hand: what the read proves holds from here.
                # (Stamped before the pool wait, a read that waited longer than the cache's
                # lifetime under load would be cached already expired, and every later request
                # would read again: the cache would stop serving exactly when it matters.)
                read_at = time.monotonic()
                agent = await authenticate_agent_key(session, token)
            cache.put(digest, agent, read_at)
        return agent

    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        opt = connection.route_handler.opt
        wanted = opt.get("credential", "bearer")
        database: Database = connection.app.state.database
        # Cookies are parsed only where a login session may stand in for a token.
        cookie = connection.cookies.get(SESSION_COOKIE) if wanted == "bearer" else None
        if cookie and "authorization" not in connection.headers:
            if TokenKind.of(cookie) is not TokenKind.SESSION:
                raise Unauthorized("The session cookie does not hold a session token")
            async with authentication_read(connection.scope, database) as session:
                principal = await authenticate_bearer(session, cookie)
            check_same_origin(connection)
            return AuthenticationResult(user=principal, auth=principal.token_id)
        token = presented_token(connection)
        kind = TokenKind.of(token)
        if wanted == "bearer" and kind in BEARER_KINDS:
            async with authentication_read(connection.scope, database) as session:
                principal = await authenticate_bearer(session, token)
            return AuthenticationResult(user=principal, auth=principal.token_id)
        if wanted == "enrollment" and kind is TokenKind.ENROLLMENT:
            return AuthenticationResult(user=EnrollmentCredential(token), auth=None)
        if wanted == "agent" and kind is TokenKind.AGENT_KEY:
            agent = await self._agent(connection, database, token)
            if connection.path_params.get("agent_id") != agent.agent_id:
                raise Unauthorized("This agent key belongs to another agent")
            scope = opt.get("scope")
            if scope is not None and scope not in agent.scopes:
                raise Forbidden(f"The agent key lacks the {scope} scope")
            return AuthenticationResult(user=agent, auth=agent.key_id)
        raise Unauthorized("This kind of token is not accepted on this route")
