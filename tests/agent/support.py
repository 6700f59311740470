"""Helpers shared by the agent tests."""

from __future__ import annotations

from shared.signing import Envelope, KeySet, new_signing_key, public_key_of, sign_keyset

__all__ = ["ORG_ID", "signed_keyset"]

ORG_ID = "org_test"


def signed_keyset(version: int = 1) -> Envelope:
    """A freshly signed, well-formed key set of :data:`ORG_ID`."""
    kid, key = new_signing_key()
    keyset = KeySet(
        org_id=ORG_ID, version=version, keys=[public_key_of(kid, key)], issued_at=1_700_000_000
    )
    return sign_keyset(keyset, [(kid, key)])
