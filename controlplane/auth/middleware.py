"""Authenticates every request to a non-excluded route before its body is read.

Routes opt out with ``opt={"exclude_from_auth": True}`` (health, schema). The credential kind a
route accepts is ``opt["credential"]``: ``"bearer"`` (default; API and session tokens),
``"enrollment"`` (checked and consumed by the enroll service) or ``"agent"`` (an agent key, which
must belong to the ``{agent_id}`` in the path (else 401) and carry ``opt["scope"]`` (else 403)).
A token of another kind is a 401.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from controlplane.agents.keys import authenticate_agent_key
from controlplane.auth.principal import EnrollmentCredential
from controlplane.auth.secrets import TokenKind
from controlplane.auth.service import authenticate_bearer
from controlplane.errors import Forbidden, Unauthorized

if TYPE_CHECKING:
    from litestar.connection import ASGIConnection

    from controlplane.db import Database

__all__ = ["AuthenticationMiddleware"]

BEARER_KINDS = frozenset({TokenKind.PERSONAL, TokenKind.SESSION})


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


class AuthenticationMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        token = presented_token(connection)
        kind = TokenKind.of(token)
        opt = connection.route_handler.opt
        wanted = opt.get("credential", "bearer")
        database: Database = connection.app.state.database
        if wanted == "bearer" and kind in BEARER_KINDS:
            async with database.sessionmaker() as session:
                principal = await authenticate_bearer(session, token)
            return AuthenticationResult(user=principal, auth=principal.token_id)
        if wanted == "enrollment" and kind is TokenKind.ENROLLMENT:
            return AuthenticationResult(user=EnrollmentCredential(token), auth=None)
        if wanted == "agent" and kind is TokenKind.AGENT_KEY:
            async with database.sessionmaker() as session:
                agent = await authenticate_agent_key(session, token)
            if connection.path_params.get("agent_id") != agent.agent_id:
                raise Unauthorized("This agent key belongs to another agent")
            scope = opt.get("scope")
            if scope is not None and scope not in agent.scopes:
                raise Forbidden(f"The agent key lacks the {scope} scope")
            return AuthenticationResult(user=agent, auth=agent.key_id)
        raise Unauthorized("This kind of token is not accepted on this route")
