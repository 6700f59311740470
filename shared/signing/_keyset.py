"""Signed key sets: how an agent learns an organization's new keys from the keys it already trusts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from shared.signing._envelope import Envelope, sign_payload, verify_envelope
from shared.signing._errors import MalformedError, StaleKeySetError, WrongOrganizationError
from shared.signing._keys import KeySet, load_keyset, show

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = ["decode_keyset", "sign_keyset", "verify_keyset_update"]


def sign_keyset(keyset: KeySet, keys: Sequence[tuple[str, Ed25519PrivateKey]]) -> Envelope:
    """Sign a key set; the payload is ``msgspec.to_builtins(keyset)``.

    To let agents move from one set to the next, sign with keys of the *previous* set that are still
    valid (adding the new key does no harm): see :func:`verify_keyset_update`.

    Args:
        keyset: The key set to publish.
        keys: ``(kid, private key)`` pairs to sign with.

    Returns:
        The signed envelope.

    Raises:
        ValueError: If the key set is not well-formed or ``keys`` is unusable (see
            :func:`~shared.signing.sign_payload`).
    """
    try:
        load_keyset(keyset)
    except MalformedError as exc:
        raise ValueError(str(exc)) from exc
    payload: dict[str, Any] = msgspec.to_builtins(keyset)
    return sign_payload(payload, keys)


def decode_keyset(envelope: Envelope) -> KeySet:
    """Read the key set in an envelope's payload, without verifying any signature.

    Use it for the key set received at enrollment (which is then pinned); later sets go through
    :func:`verify_keyset_update`.

    Args:
        envelope: An envelope made by :func:`sign_keyset`.

    Returns:
        The key set.

    Raises:
        MalformedError: If the payload is not a well-formed key set.
    """
    payload: object = envelope.payload if isinstance(envelope, Envelope) else None
    if not isinstance(payload, dict):
        raise MalformedError("key set envelope has no JSON object payload")
    try:
        keyset = msgspec.convert(payload, KeySet)
    except (msgspec.MsgspecError, TypeError, ValueError, RecursionError) as exc:
        raise MalformedError(f"payload is not a key set: {exc}") from exc
    load_keyset(keyset)
    return keyset


def verify_keyset_update(pinned: KeySet, update: Envelope, *, now: int) -> KeySet:
    """Accept a newer key set only when a key the agent already trusts vouches for it.

    The update must verify (:func:`~shared.signing.verify_envelope`) against ``pinned``: a key of the
    pinned set, not retired at ``now``, signed it. Its ``org_id`` must equal the pinned one and its
    ``version`` must be greater (versions may be skipped, but only if the update is signed by a key
    that is still in ``pinned``; otherwise apply the intermediate sets in order).

    Args:
        pinned: The key set the agent trusts now.
        update: The signed new key set.
        now: The current time in unix seconds.

    Returns:
        The new key set, to pin in place of ``pinned``.

    Raises:
        VerificationError: Any error of :func:`~shared.signing.verify_envelope` (an update signed only
            by keys not in ``pinned`` is :class:`UnknownKeyError`), :class:`MalformedError` if the
            payload is not a key set, :class:`WrongOrganizationError` for another organization's set,
            :class:`StaleKeySetError` if the version is not greater (stale or replayed).
    """
    verify_envelope(update, pinned, now=now)
    keyset = decode_keyset(update)
    if keyset.org_id != pinned.org_id:
        raise WrongOrganizationError(
            f"key set is for {show(keyset.org_id)}, pinned set is for {show(pinned.org_id)}"
        )
    if keyset.version <= pinned.version:
        raise StaleKeySetError(
            f"key set version {keyset.version} is not newer than pinned version {pinned.version}"
        )
    return keyset
