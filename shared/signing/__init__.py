"""Ed25519 signatures that the control plane makes and the agent verifies.

The control plane signs deployment manifests and config bundle records (a JSON object payload) and
each organization's public key set with the organization's keys, each known by a ``kid``. Both sides
verify with :func:`verify_envelope`. An agent pins the key set it receives at enrollment
(:func:`decode_keyset`) and moves to a newer one only through :func:`verify_keyset_update`, that is
only when a key it already trusts signed it.

Signatures cover :func:`canonical_bytes` of the payload, so any JSON encoding of an envelope
verifies as long as it decodes to the same values. Every verification failure is a
:class:`VerificationError` subclass with a stable ``reason`` string.
"""

from __future__ import annotations

from shared.signing._canonical import (
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    CanonicalizationError,
    canonical_bytes,
)
from shared.signing._envelope import (
    CLOCK_SKEW_SECONDS,
    MAX_SIGNATURES,
    Envelope,
    Signature,
    decode_envelope,
    encode_envelope,
    sign_payload,
    verify_envelope,
)
from shared.signing._errors import (
    BadSignatureError,
    ExpiredError,
    KeyRetiredError,
    MalformedError,
    NotYetValidError,
    StaleKeySetError,
    UnknownKeyError,
    VerificationError,
    WrongEnvironmentError,
    WrongOrganizationError,
)
from shared.signing._keys import KeySet, PublicKey, kid_for, new_signing_key, public_key_of
from shared.signing._keyset import decode_keyset, sign_keyset, verify_keyset_update

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "MAX_DEPTH",
    "MAX_SAFE_INTEGER",
    "MAX_SIGNATURES",
    "BadSignatureError",
    "CanonicalizationError",
    "Envelope",
    "ExpiredError",
    "KeyRetiredError",
    "KeySet",
    "MalformedError",
    "NotYetValidError",
    "PublicKey",
    "Signature",
    "StaleKeySetError",
    "UnknownKeyError",
    "VerificationError",
    "WrongEnvironmentError",
    "WrongOrganizationError",
    "canonical_bytes",
    "decode_envelope",
    "decode_keyset",
    "encode_envelope",
    "kid_for",
    "new_signing_key",
    "public_key_of",
    "sign_keyset",
    "sign_payload",
    "verify_envelope",
    "verify_keyset_update",
]
