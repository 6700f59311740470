"""Signing keys of an organization: created on first need, rotated with an overlap.

Every signature the control plane makes (bundles, manifests, key sets) is made with all of the
organization's *valid* keys: the active one, and rotated-out keys until their ``not_after``. So an
agent still pinned to the previous key set keeps verifying during the overlap, and one that already
holds the new set verifies too.

Each key set is signed by the keys of the previous set that are still valid (plus the new key), so
an agent accepts a new set only when a key it already trusts vouches for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy import func, or_, select

from controlplane.db.engine import FLEET, ensure_writable, mark_changed
from controlplane.db.models import KeySetRow, OrganizationRow, SigningKeyRow
from controlplane.db.types import utcnow
from shared.pipelines import SigningKeyInfo, SigningKeys
from shared.signing import (
    Envelope,
    KeySet,
    PublicKey,
    new_signing_key,
    public_key_of,
    sign_keyset,
    sign_payload,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from datetime import datetime, timedelta

    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.signing.kek import KeyEncryptionKey

__all__ = [
    "current_keyset",
    "describe_keys",
    "ensure_org_key",
    "rotate_org_key",
    "sign_for_org",
    "signing_keys",
]


def _unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _aad(org_id: str, kid: str) -> str:
    return f"byteor:signing-key:{org_id}:{kid}"


def _seal(kek: KeyEncryptionKey, org_id: str, kid: str, key: Ed25519PrivateKey) -> str:
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return kek.seal(raw, _aad(org_id, kid))


def _unseal(kek: KeyEncryptionKey, row: SigningKeyRow) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(
        kek.unseal(row.private_key_sealed, _aad(row.org_id, row.kid))
    )


async def _valid_rows(session: AsyncSession, org_id: str, now: datetime) -> list[SigningKeyRow]:
    rows = await session.scalars(
        select(SigningKeyRow)
        .where(
            SigningKeyRow.org_id == org_id,
            or_(SigningKeyRow.not_after.is_(None), SigningKeyRow.not_after > now),
        )
        .order_by(SigningKeyRow.created_at, SigningKeyRow.kid)
    )
    return list(rows)


def _new_key_row(kek: KeyEncryptionKey, org_id: str) -> tuple[SigningKeyRow, Ed25519PrivateKey]:
    kid, key = new_signing_key()
    raw_public = public_key_of(kid, key).public_key
    row = SigningKeyRow(
        kid=kid,
        org_id=org_id,
        public_key=raw_public,
        private_key_sealed=_seal(kek, org_id, kid, key),
        active=True,
    )
    return row, key


async def _publish(
    session: AsyncSession,
    kek: KeyEncryptionKey,
    org_id: str,
    signers: list[tuple[str, Ed25519PrivateKey]],
    now: datetime,
) -> None:
    version = (
        await session.scalar(select(func.max(KeySetRow.version)).where(KeySetRow.org_id == org_id))
        or 0
    ) + 1
    keys = [
        PublicKey(kid=r.kid, public_key=r.public_key, not_after=_unix(r.not_after))
        for r in await _valid_rows(session, org_id, now)
    ]
    keyset = KeySet(org_id=org_id, version=version, keys=keys, issued_at=int(now.timestamp()))
    envelope = sign_keyset(keyset, signers)
    session.add(KeySetRow(org_id=org_id, version=version, envelope=msgspec.to_builtins(envelope)))
    mark_changed(session, FLEET)  # heartbeats announce the new key-set version
    await session.flush()


async def ensure_org_key(session: AsyncSession, kek: KeyEncryptionKey, org_id: str) -> None:
    """Create the organization's first key and key set if it has none (does not commit)."""
    # Serialise first-key creation per organization (row lock on PostgreSQL; SQLite transactions
    # are already serial), so two concurrent first uses cannot publish two "version 1" sets.
    await session.execute(
        select(OrganizationRow.id).where(OrganizationRow.id == org_id).with_for_update()
    )
    if await session.scalar(
        select(SigningKeyRow.kid).where(SigningKeyRow.org_id == org_id).limit(1)
    ):
        return
    row, key = _new_key_row(kek, org_id)
    session.add(row)
    await session.flush()
    await _publish(session, kek, org_id, [(row.kid, key)], utcnow())


async def signing_keys(
    session: AsyncSession, kek: KeyEncryptionKey, org_id: str
) -> list[tuple[str, Ed25519PrivateKey]]:
    """Every currently valid key of the organization, ready to sign with."""
    await ensure_org_key(session, kek, org_id)
    return [(r.kid, _unseal(kek, r)) for r in await _valid_rows(session, org_id, utcnow())]


async def sign_for_org(
    session: AsyncSession, kek: KeyEncryptionKey, org_id: str, payload: Mapping[str, Any]
) -> Envelope:
    """Sign ``payload`` with every valid key of the organization."""
    return sign_payload(payload, await signing_keys(session, kek, org_id))


async def current_keyset(session: AsyncSession, kek: KeyEncryptionKey, org_id: str) -> Envelope:
    """The newest signed public key set of the organization (created on first use).

    Usually a read; only an organization's very first use writes (in a write transaction,
    also from a reading route).
    """
    newest = (
        select(KeySetRow)
        .where(KeySetRow.org_id == org_id)
        .order_by(KeySetRow.version.desc())
        .limit(1)
    )
    row = await session.scalar(newest)
    if row is None:
        await ensure_writable(session)
        await ensure_org_key(session, kek, org_id)
        row = await session.scalar(newest)
    if row is None:  # pragma: no cover - ensure_org_key publishes one
        raise RuntimeError("organization has keys but no key set")
    return msgspec.convert(row.envelope, Envelope)


async def rotate_org_key(
    session: AsyncSession, kek: KeyEncryptionKey, org_id: str, overlap: timedelta
) -> None:
    """Add a new active key; current keys stay valid for ``overlap`` and then retire (no commit)."""
    await ensure_org_key(session, kek, org_id)
    now = utcnow()
    previous = await signing_keys(session, kek, org_id)
    for row in await _valid_rows(session, org_id, now):
        if row.active:
            row.active = False
            row.not_after = now + overlap
    row, key = _new_key_row(kek, org_id)
    session.add(row)
    await session.flush()
    await _publish(session, kek, org_id, [*previous, (row.kid, key)], now)


async def describe_keys(session: AsyncSession, kek: KeyEncryptionKey, org_id: str) -> SigningKeys:
    """Public halves of every key (retired ones included) and the newest signed key set."""
    keyset = await current_keyset(session, kek, org_id)
    rows = await session.scalars(
        select(SigningKeyRow)
        .where(SigningKeyRow.org_id == org_id)
        .order_by(SigningKeyRow.created_at, SigningKeyRow.kid)
    )
    return SigningKeys(
        keys=[
            SigningKeyInfo(
                kid=r.kid,
                public_key=r.public_key,
                active=r.active,
                not_after=r.not_after,
                created_at=r.created_at,
            )
            for r in rows
        ],
        keyset=keyset,
    )
