"""``/api/v1/me`` and the caller's own API tokens at ``/api/v1/tokens``."""

from __future__ import annotations

from litestar import Controller, delete, get, post
from litestar.params import FromPath, JSONBody

from controlplane.auth import service
from controlplane.deps import Caller, DbSession
from shared.resources import ApiToken, ApiTokenCreate, ApiTokenCreated, Me

__all__ = ["MeController", "TokenController"]


class MeController(Controller):
    path = "/api/v1/me"
    tags = ["identity"]

    @get("/", summary="The caller and their organization memberships")
    async def me(self, session: DbSession, caller: Caller) -> Me:
        return await service.describe_caller(session, caller)


class TokenController(Controller):
    path = "/api/v1/tokens"
    tags = ["identity"]

    @get("/", summary="List the caller's API tokens (never their secrets)")
    async def list_tokens(self, session: DbSession, caller: Caller) -> list[ApiToken]:
        return await service.list_tokens(session, caller.user_id)

    @post("/", summary="Create an API token for the caller; the secret is shown once")
    async def create_token(
        self, session: DbSession, caller: Caller, data: JSONBody[ApiTokenCreate]
    ) -> ApiTokenCreated:
        return await service.create_token(
            session, caller.user_id, data.name, data.expires_in, not_after=caller.token_expires_at
        )

    @delete("/{token_id:str}", summary="Revoke one of the caller's tokens")
    async def revoke_token(
        self, session: DbSession, caller: Caller, token_id: FromPath[str]
    ) -> None:
        await service.revoke_token(session, caller.user_id, token_id)
