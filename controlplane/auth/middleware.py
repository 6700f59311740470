"""Authenticates every request to a non-excluded route before its body is read.

Routes opt out with ``opt={"exclude_from_auth": True}`` (health, schema). The credential kind a
route accepts is ``opt["credential"]`` (default ``"bearer"``); a token of another kind is a 401.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult

from controlplane.auth.secrets import TokenKind
from controlplane.auth.service import authenticate_bearer
from controlplane.errors import Unauthorized

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
        wanted = connection.route_handler.opt.get("credential", "bearer")
        if wanted == "bearer" and kind in BEARER_KINDS:
            database: Database = connection.app.state.database
            async with database.sessionmaker() as session:
                principal = await authenticate_bearer(session, token)
            return AuthenticationResult(user=principal, auth=principal.token_id)
        raise Unauthorized("The token is not valid for this route")
