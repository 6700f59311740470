"""Ed25519 keys, key ids, public key sets and the strict base64url they travel in."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Final, Literal, NamedTuple

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.signing._errors import MalformedError

__all__ = [
    "PUBLIC_KEY_SIZE",
    "SIGNATURE_SIZE",
    "KeySet",
    "PublicKey",
    "TrustedKey",
    "b64url_decode",
    "b64url_encode",
    "kid_for",
    "load_keyset",
    "new_signing_key",
    "public_key_of",
    "show",
]

PUBLIC_KEY_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
_B64URL: Final = re.compile(r"[A-Za-z0-9_-]*")


class PublicKey(msgspec.Struct, frozen=True, kw_only=True):
    """One public key of an organization's key set.

    ``public_key`` is the base64url (no padding) of the 32 raw Ed25519 bytes. Signatures by this key
    are accepted until ``not_after`` (unix seconds, inclusive): a rotated-out key keeps verifying for
    an overlap window. ``None`` means no end.
    """

    kid: str
    alg: Literal["Ed25519"] = "Ed25519"
    public_key: str
    not_after: int | None = None


class KeySet(msgspec.Struct, kw_only=True):
    """The public keys an organization signs with; ``version`` increases by 1 on every change."""

    org_id: str
    version: int
    keys: list[PublicKey]
    issued_at: int


class TrustedKey(NamedTuple):
    """A validated key set entry with its loaded public key."""

    entry: PublicKey
    key: Ed25519PublicKey


def b64url_encode(data: bytes) -> str:
    """Encode as base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: object, size: int) -> bytes | None:
    """Decode unpadded base64url of exactly ``size`` bytes, or ``None`` for anything else.

    Strict: no padding, no standard-alphabet or foreign characters, no whitespace and no non-zero
    trailing bits, so every byte string has exactly one accepted text form.
    """
    if not isinstance(text, str) or len(text) != (4 * size + 2) // 3:
        return None
    if _B64URL.fullmatch(text) is None:
        return None
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if len(raw) != size or b64url_encode(raw) != text:
        return None
    return raw


def show(value: object) -> str:
    """A short, printable rendering of an untrusted value for error messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def kid_for(public_key: Ed25519PublicKey) -> str:
    """Return the key id of ``public_key``: ``"kid_"`` and the first 16 hex digits of its SHA-256.

    Args:
        public_key: The Ed25519 public key.

    Returns:
        An id such as ``"kid_3f9a0c1d2e4b5a69"``, the same for the same key everywhere.
    """
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "kid_" + hashlib.sha256(raw).hexdigest()[:16]


def new_signing_key() -> tuple[str, Ed25519PrivateKey]:
    """Generate a new Ed25519 signing key.

    Returns:
        ``(kid, key)`` where ``kid`` is :func:`kid_for` of the key's public half.
    """
    key = Ed25519PrivateKey.generate()
    return kid_for(key.public_key()), key


def public_key_of(kid: str, key: Ed25519PrivateKey, not_after: int | None = None) -> PublicKey:
    """Return the key set entry that publishes the public half of ``key``.

    Args:
        kid: The key id to publish it under.
        key: The private key.
        not_after: Unix seconds after which its signatures are no longer accepted, if any.
    """
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return PublicKey(kid=kid, public_key=b64url_encode(raw), not_after=not_after)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _load_key(entry: object, index: int) -> TrustedKey:
    where = f"key set entry {index}"
    if not isinstance(entry, PublicKey):
        raise MalformedError(f"{where} is not a PublicKey")
    if not isinstance(entry.kid, str) or not entry.kid:
        raise MalformedError(f"{where} has no kid")
    if entry.alg != "Ed25519":
        raise MalformedError(f"{where} ({show(entry.kid)}) has unsupported alg {show(entry.alg)}")
    if entry.not_after is not None and not _is_int(entry.not_after):
        raise MalformedError(f"{where} ({show(entry.kid)}) has a non-integer not_after")
    raw = b64url_decode(entry.public_key, PUBLIC_KEY_SIZE)
    if raw is None:
        raise MalformedError(f"{where} ({show(entry.kid)}) is not a base64url Ed25519 public key")
    try:
        key = Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as exc:
        raise MalformedError(f"{where} ({show(entry.kid)}) is not an Ed25519 public key") from exc
    return TrustedKey(entry, key)


def load_keyset(keyset: object) -> dict[str, TrustedKey]:
    """Validate a key set and return its keys by kid.

    Raises:
        MalformedError: If any field has the wrong type, ``org_id`` is empty, ``version`` or
            ``issued_at`` is negative, there are no keys, two keys share a kid, or a key does not decode.
    """
    if not isinstance(keyset, KeySet):
        raise MalformedError("key set is not a KeySet")
    if not isinstance(keyset.org_id, str) or not keyset.org_id:
        raise MalformedError("key set has no org_id")
    for name in ("version", "issued_at"):
        value = getattr(keyset, name)
        if not _is_int(value) or value < 0:
            raise MalformedError(f"key set {name} must be a non-negative integer")
    if not isinstance(keyset.keys, list) or not keyset.keys:
        raise MalformedError("key set has no keys")
    trusted: dict[str, TrustedKey] = {}
    for index, entry in enumerate(keyset.keys):
        loaded = _load_key(entry, index)
        if loaded.entry.kid in trusted:
            raise MalformedError(f"key set lists kid {show(loaded.entry.kid)} twice")
        trusted[loaded.entry.kid] = loaded
    return trusted
