"""``/api/v1/orgs/{org_id}/signing-keys``: public keys, the signed key set, rotation."""

from __future__ import annotations

from datetime import timedelta

from litestar import Controller, get, post
from litestar.datastructures import State
from litestar.params import FromPath, JSONBody

from controlplane.deps import Caller, DbSession, Kek
from controlplane.orgs.access import authorize
from controlplane.signing import service
from shared.pipelines import KeyRotation, SigningKeys
from shared.roles import Role

__all__ = ["SigningKeyController"]


class SigningKeyController(Controller):
    path = "/api/v1/orgs/{org_id:str}/signing-keys"
    tags = ["signing keys"]

    @get("/", summary="The organization's public keys and signed key set (viewer)")
    async def get_keys(
        self, session: DbSession, caller: Caller, kek: Kek, org_id: FromPath[str]
    ) -> SigningKeys:
        await authorize(session, caller, org_id, Role.VIEWER)
        keys = await service.describe_keys(session, kek, org_id)
        await session.commit()
        return keys

    @post(
        "/rotate",
        summary="Add a new active signing key; the old ones stay valid for the overlap (admin)",
    )
    async def rotate(
        self,
        state: State,
        session: DbSession,
        caller: Caller,
        kek: Kek,
        org_id: FromPath[str],
        data: JSONBody[KeyRotation | None] = None,
    ) -> SigningKeys:
        await authorize(session, caller, org_id, Role.ADMIN)
        seconds = data.overlap_seconds if data and data.overlap_seconds is not None else None
        overlap = timedelta(
            seconds=seconds if seconds is not None else state.settings.key_rotation_overlap_seconds
        )
        await service.rotate_org_key(session, kek, org_id, overlap)
        keys = await service.describe_keys(session, kek, org_id)
        await session.commit()
        return keys
