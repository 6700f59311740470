"""``/api/v1/orgs``: organizations, members and service accounts."""

from __future__ import annotations

from litestar import Controller, delete, get, post, put
from litestar.params import FromPath, JSONBody

from controlplane.deps import Caller, DbSession, Paging
from controlplane.orgs import members, service
from shared.resources import (
    ApiToken,
    ApiTokenCreate,
    ApiTokenCreated,
    Member,
    MemberCreate,
    MemberUpdate,
    Organization,
    OrganizationCreate,
    OrganizationUpdate,
    Page,
    ServiceAccount,
    ServiceAccountCreate,
    ServiceAccountCreated,
)

__all__ = ["MemberController", "OrganizationController", "ServiceAccountController"]


class OrganizationController(Controller):
    path = "/api/v1/orgs"
    tags = ["organizations"]

    @get("/", summary="List organizations the caller belongs to")
    async def list_orgs(
        self, session: DbSession, caller: Caller, page: Paging
    ) -> Page[Organization]:
        return await service.list_orgs(session, caller, page)

    @post("/", summary="Create an organization (the caller becomes its owner)")
    async def create_org(
        self, session: DbSession, caller: Caller, data: JSONBody[OrganizationCreate]
    ) -> Organization:
        return await service.create_org(session, caller, data)

    @get("/{org_id:str}", summary="Get an organization (viewer)")
    async def get_org(
        self, session: DbSession, caller: Caller, org_id: FromPath[str]
    ) -> Organization:
        return await service.get_org(session, caller, org_id)

    @put("/{org_id:str}", summary="Update an organization's name or runtime config (admin)")
    async def update_org(
        self,
        session: DbSession,
        caller: Caller,
        org_id: FromPath[str],
        data: JSONBody[OrganizationUpdate],
    ) -> Organization:
        return await service.update_org(session, caller, org_id, data)


class MemberController(Controller):
    path = "/api/v1/orgs/{org_id:str}/members"
    tags = ["members"]

    @get("/", summary="List members and their roles (viewer)")
    async def list_members(
        self, session: DbSession, caller: Caller, org_id: FromPath[str], page: Paging
    ) -> Page[Member]:
        return await members.list_members(session, caller, org_id, page)

    @post("/", summary="Add a person by e-mail with a role (admin)")
    async def add_member(
        self,
        session: DbSession,
        caller: Caller,
        org_id: FromPath[str],
        data: JSONBody[MemberCreate],
    ) -> Member:
        return await members.add_member(session, caller, org_id, data)

    @put("/{user_id:str}", summary="Change a member's role (admin; owners by owners)")
    async def update_member(
        self,
        session: DbSession,
        caller: Caller,
        org_id: FromPath[str],
        user_id: FromPath[str],
        data: JSONBody[MemberUpdate],
    ) -> Member:
        return await members.update_member(session, caller, org_id, user_id, data.role)

    @delete("/{user_id:str}", summary="Remove a member (admin; owners by owners)")
    async def remove_member(
        self, session: DbSession, caller: Caller, org_id: FromPath[str], user_id: FromPath[str]
    ) -> None:
        await members.remove_member(session, caller, org_id, user_id)


class ServiceAccountController(Controller):
    path = "/api/v1/orgs/{org_id:str}/service-accounts"
    tags = ["service accounts"]

    @get("/", summary="List service accounts (admin)")
    async def list_accounts(
        self, session: DbSession, caller: Caller, org_id: FromPath[str], page: Paging
    ) -> Page[ServiceAccount]:
        return await members.list_service_accounts(session, caller, org_id, page)

    @post("/", summary="Create a service account; its token is shown once (admin)")
    async def create_account(
        self,
        session: DbSession,
        caller: Caller,
        org_id: FromPath[str],
        data: JSONBody[ServiceAccountCreate],
    ) -> ServiceAccountCreated:
        return await members.create_service_account(session, caller, org_id, data)

    @delete("/{account_id:str}", summary="Delete a service account and its tokens (admin)")
    async def delete_account(
        self, session: DbSession, caller: Caller, org_id: FromPath[str], account_id: FromPath[str]
    ) -> None:
        await members.delete_service_account(session, caller, org_id, account_id)

    @get("/{account_id:str}/tokens", summary="List a service account's tokens (admin)")
    async def list_tokens(
        self, session: DbSession, caller: Caller, org_id: FromPath[str], account_id: FromPath[str]
    ) -> list[ApiToken]:
        return await members.list_service_account_tokens(session, caller, org_id, account_id)

    @post("/{account_id:str}/tokens", summary="Issue a service account token, shown once (admin)")
    async def create_token(
        self,
        session: DbSession,
        caller: Caller,
        org_id: FromPath[str],
        account_id: FromPath[str],
        data: JSONBody[ApiTokenCreate],
    ) -> ApiTokenCreated:
        return await members.create_service_account_token(session, caller, org_id, account_id, data)

    @delete("/{account_id:str}/tokens/{token_id:str}", summary="Revoke a token (admin)")
    async def revoke_token(
        self,
        session: DbSession,
        caller: Caller,
        org_id: FromPath[str],
        account_id: FromPath[str],
        token_id: FromPath[str],
    ) -> None:
        await members.revoke_service_account_token(session, caller, org_id, account_id, token_id)
