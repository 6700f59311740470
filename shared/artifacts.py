"""The artifact upload protocol between agents and the control plane.

An agent uploads ``POST /api/v1/agents/{id}/artifacts`` as ``multipart/form-data`` with two
parts, in this order: ``metadata`` (``application/json``, an :class:`ArtifactMetadata`) and
``file`` (the bytes). The metadata is signed with the agent's own Ed25519 key (generated at
enrollment; its public half is sent as ``public_key`` in the enroll request), over
:func:`signing_bytes`, so the control plane can prove which agent produced an artifact.

The same ``idempotency_key`` (or the same content digest) from the same agent is answered with
the artifact already stored, so retries never duplicate.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.base import Message
from shared.signing import canonical_bytes

__all__ = [
    "ARTIFACT_KINDS",
    "MAX_ARTIFACT_BYTES",
    "ArtifactKind",
    "ArtifactMetadata",
    "ArtifactReceipt",
    "is_identity_key",
    "sign_metadata",
    "signing_bytes",
    "verify_metadata",
]

#: 32 bytes in unpadded base64url: 43 characters, the last one carrying 2 bits.
_IDENTITY_KEY = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")

#: Largest accepted artifact (the file part); larger uploads are refused with 413 while streaming.
MAX_ARTIFACT_BYTES = 64 * 1024 * 1024

ArtifactKind = Literal["incident", "telemetry"]
ARTIFACT_KINDS: tuple[str, ...] = ("incident", "telemetry")
Hex64 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
Short = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


class ArtifactMetadata(Message):
    """What the agent says about an artifact; ``signature`` covers every other field."""

    agent_id: Annotated[str, msgspec.Meta(max_length=40)]
    kind: ArtifactKind
    sha256: Hex64
    size: Annotated[int, msgspec.Meta(ge=0, le=MAX_ARTIFACT_BYTES)]
    captured_at: datetime
    idempotency_key: Short
    filename: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    deployment_id: Annotated[str, msgspec.Meta(max_length=40)] | None = None
    spec_hash: Annotated[str, msgspec.Meta(max_length=80)] | None = None
    signature: str = ""


class ArtifactReceipt(Message):
    """The control plane's answer to an upload (201 new, 200 already stored)."""

    artifact_id: str
    status: str
    duplicate: bool = False


def signing_bytes(metadata: ArtifactMetadata) -> bytes:
    """The canonical bytes the agent signs: every metadata field except ``signature``."""
    fields = msgspec.to_builtins(metadata)
    fields.pop("signature", None)
    return canonical_bytes(fields)


def sign_metadata(metadata: ArtifactMetadata, key: Ed25519PrivateKey) -> ArtifactMetadata:
    """A copy of ``metadata`` with ``signature`` set (base64url, no padding)."""
    signature = key.sign(signing_bytes(metadata))
    encoded = base64.urlsafe_b64encode(signature).decode().rstrip("=")
    return msgspec.structs.replace(metadata, signature=encoded)


def is_identity_key(public_key: str) -> bool:
    """Whether ``public_key`` is base64url (unpadded) of a raw 32-byte Ed25519 public key."""
    if _IDENTITY_KEY.fullmatch(public_key) is None:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(public_key + "="))
    except ValueError:
        return False
    return True


def verify_metadata(metadata: ArtifactMetadata, public_key: str) -> bool:
    """Whether ``metadata.signature`` is the agent's signature (``public_key``: base64url raw)."""
    try:
        raw = base64.urlsafe_b64decode(public_key + "=" * (-len(public_key) % 4))
        signature = base64.urlsafe_b64decode(
            metadata.signature + "=" * (-len(metadata.signature) % 4)
        )
        Ed25519PublicKey.from_public_bytes(raw).verify(signature, signing_bytes(metadata))
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True
