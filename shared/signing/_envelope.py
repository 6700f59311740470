"""Signed envelopes: a JSON object payload plus Ed25519 signatures over its canonical bytes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec
from cryptography.exceptions import InvalidSignature

from shared.signing._canonical import CanonicalizationError, canonical_bytes
from shared.signing._errors import (
    BadSignatureError,
    ExpiredError,
    KeyRetiredError,
    MalformedError,
    NotYetValidError,
    UnknownKeyError,
    VerificationError,
    WrongEnvironmentError,
)
from shared.signing._keys import (
    SIGNATURE_SIZE,
    KeySet,
    TrustedKey,
    b64url_decode,
    b64url_encode,
    load_keyset,
    show,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

__all__ = [
    "CLOCK_SKEW_SECONDS",
    "MAX_SIGNATURES",
    "Envelope",
    "Signature",
    "check_envelope",
    "decode_envelope",
    "encode_envelope",
    "sign_payload",
    "verify_envelope",
]

#: How far ``not_before``/``issued_at`` may lie in the future before a payload is "not yet valid".
CLOCK_SKEW_SECONDS: Final = 300
#: Most signatures an envelope may carry (bounds the work an envelope can cause).
MAX_SIGNATURES: Final = 32


class Signature(msgspec.Struct, frozen=True, kw_only=True):
    """One signature: the signing key's id and the base64url (no padding) Ed25519 signature."""

    kid: str
    sig: str


class Envelope(msgspec.Struct, kw_only=True):
    """A JSON object payload with one signature per signing key over its canonical bytes."""

    payload: dict[str, Any]
    signatures: list[Signature]


def sign_payload(
    payload: Mapping[str, Any], keys: Sequence[tuple[str, Ed25519PrivateKey]]
) -> Envelope:
    """Sign ``payload`` with each key.

    The envelope carries a copy of the payload as it reads back from its canonical bytes, so it holds
    plain ``dict``/``list`` values and later changes to ``payload`` do not affect it.

    Args:
        payload: The JSON object to sign (see :func:`~shared.signing.canonical_bytes`).
        keys: ``(kid, private key)`` pairs; one signature is made per pair.

    Returns:
        The signed envelope.

    Raises:
        CanonicalizationError: If ``payload`` has no canonical form.
        ValueError: If there are no keys, more than :data:`MAX_SIGNATURES`, or a kid repeats.
    """
    message = canonical_bytes(payload)
    if not keys:
        raise ValueError("at least one signing key is required")
    if len(keys) > MAX_SIGNATURES:
        raise ValueError(f"at most {MAX_SIGNATURES} signing keys are supported")
    kids = [kid for kid, _ in keys]
    if len(set(kids)) != len(kids):
        raise ValueError("each signing key must have a distinct kid")
    signatures = [Signature(kid=kid, sig=b64url_encode(key.sign(message))) for kid, key in keys]
    return Envelope(
        payload=msgspec.json.decode(message, type=dict[str, Any]), signatures=signatures
    )


def verify_envelope(
    envelope: Envelope, keyset: KeySet, *, now: int, expected_environment_id: str | None = None
) -> dict[str, Any]:
    """Verify an envelope against a trusted key set and return its payload.

    The checks, in order:

    1. Shape: the envelope has a JSON object payload with a canonical form and 1 to
       :data:`MAX_SIGNATURES` signatures of string ``kid`` and ``sig``; the key set is well-formed.
       Otherwise :class:`MalformedError`.
    2. Signatures: one *acceptable* signature is required: its kid is in ``keyset``, that key's
       ``not_after`` is ``None`` or ``>= now``, and it verifies over the payload's canonical bytes.
       Signatures by kids not in the key set are ignored, and so is any signature once an acceptable
       one is found: while keys rotate, the control plane signs with the old and the new key, and an
       agent trusts either. The list of signatures is not itself signed, so an entry that fails adds
       no authority and costs none either: refusing such envelopes would only let anyone who relays
       one invalidate it. If none is acceptable: :class:`UnknownKeyError` when no kid is known,
       else :class:`BadSignatureError` when a live trusted key's signature failed, else
       :class:`KeyRetiredError`.
    3. Payload: ``expires_at``, ``not_before`` and ``issued_at`` must be integers (unix seconds) or
       absent/``None`` (else :class:`MalformedError`). ``now > expires_at`` raises
       :class:`ExpiredError`; ``not_before`` or ``issued_at`` more than :data:`CLOCK_SKEW_SECONDS`
       after ``now`` raises :class:`NotYetValidError`; with ``expected_environment_id`` set, a
       different ``payload["environment_id"]`` raises :class:`WrongEnvironmentError`.

    Args:
        envelope: The envelope, typically from :func:`decode_envelope`.
        keyset: The trusted (pinned) key set.
        now: The current time in unix seconds.
        expected_environment_id: The environment the payload must be addressed to, if any.

    Returns:
        The verified payload (the envelope's own dict).

    Raises:
        VerificationError: A subclass per failed check as above, and nothing else for any input.
    """
    payload, signatures = check_envelope(envelope)
    trusted = load_keyset(keyset)
    try:
        message = canonical_bytes(payload)
    except CanonicalizationError as exc:
        raise MalformedError(f"payload has no canonical form: {exc}") from exc
    _check_signatures(message, signatures, trusted, now)
    _check_payload(payload, now, expected_environment_id)
    return payload


def check_envelope(envelope: object) -> tuple[dict[str, Any], list[Signature]]:
    """Return the payload and signatures of a structurally valid envelope.

    Raises:
        MalformedError: If ``envelope`` is not an :class:`Envelope` with a ``dict`` payload and
            1 to :data:`MAX_SIGNATURES` signatures with string ``kid`` and ``sig``.
    """
    if not isinstance(envelope, Envelope):
        raise MalformedError("not an Envelope")
    payload: object = envelope.payload
    signatures: object = envelope.signatures
    if not isinstance(payload, dict):
        raise MalformedError("payload is not a JSON object")
    if not isinstance(signatures, list) or not signatures:
        raise MalformedError("envelope has no signatures")
    if len(signatures) > MAX_SIGNATURES:
        raise MalformedError(f"envelope has more than {MAX_SIGNATURES} signatures")
    for signature in signatures:
        if not isinstance(signature, Signature):
            raise MalformedError("signature is not a Signature")
        if not isinstance(signature.kid, str) or not isinstance(signature.sig, str):
            raise MalformedError("signature kid and sig must be strings")
    return payload, signatures


def _check_signatures(
    message: bytes, signatures: list[Signature], trusted: dict[str, TrustedKey], now: int
) -> None:
    failures: list[VerificationError] = []
    for signature in signatures:
        found = trusted.get(signature.kid)
        if found is None:
            continue
        kid = show(signature.kid)
        not_after = found.entry.not_after
        if not_after is not None and not_after < now:
            failures.append(KeyRetiredError(f"key {kid} retired at {not_after}"))
            continue
        raw = b64url_decode(signature.sig, SIGNATURE_SIZE)
        if raw is None:
            failures.append(BadSignatureError(f"signature by {kid} is not base64url of 64 bytes"))
            continue
        try:
            found.key.verify(raw, message)
        except InvalidSignature:
            failures.append(BadSignatureError(f"signature by {kid} does not verify"))
            continue
        return
    if not failures:
        kids = ", ".join(show(s.kid) for s in signatures[:4])
        raise UnknownKeyError(f"no signature is by a key of the key set (kids: {kids})")
    bad = [failure for failure in failures if isinstance(failure, BadSignatureError)]
    raise (bad or failures)[0]


def _time_field(payload: dict[str, Any], name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedError(f"{name} must be an integer (unix seconds), got {show(value)}")
    return value


def _check_payload(payload: dict[str, Any], now: int, expected_environment_id: str | None) -> None:
    expires_at = _time_field(payload, "expires_at")
    not_before = _time_field(payload, "not_before")
    issued_at = _time_field(payload, "issued_at")
    if expires_at is not None and now > expires_at:
        raise ExpiredError(f"expired at {expires_at} (now {now})")
    for name, value in (("not_before", not_before), ("issued_at", issued_at)):
        if value is not None and value > now + CLOCK_SKEW_SECONDS:
            raise NotYetValidError(f"{name} {value} is in the future (now {now})")
    if expected_environment_id is not None:
        environment_id = payload.get("environment_id")
        if environment_id != expected_environment_id:
            raise WrongEnvironmentError(
                f"payload is for environment {show(environment_id)}, "
                f"expected {show(expected_environment_id)}"
            )


def encode_envelope(envelope: Envelope) -> bytes:
    """Serialize an envelope as JSON (the wire and storage form).

    Args:
        envelope: The envelope to serialize.

    Returns:
        UTF-8 JSON bytes; :func:`decode_envelope` reads them back.
    """
    return msgspec.json.encode(envelope)


def decode_envelope(data: bytes) -> Envelope:
    """Parse an envelope from JSON; this checks the shape only, not the signatures.

    Args:
        data: JSON bytes as made by :func:`encode_envelope`.

    Returns:
        The envelope.

    Raises:
        MalformedError: If ``data`` is not JSON of an envelope's shape (or is nested too deeply).
    """
    try:
        return msgspec.json.decode(data, type=Envelope)
    except (msgspec.MsgspecError, TypeError, ValueError, RecursionError) as exc:
        raise MalformedError(f"not an envelope: {exc}") from exc
