"""The typed errors of signature verification, one class per reason."""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "BadSignatureError",
    "ExpiredError",
    "KeyRetiredError",
    "MalformedError",
    "NotYetValidError",
    "StaleKeySetError",
    "UnknownKeyError",
    "VerificationError",
    "WrongEnvironmentError",
    "WrongOrganizationError",
]


class VerificationError(Exception):
    """Base of every verification failure.

    ``reason`` is a stable, machine-readable string per subclass (for logs, metrics and reports to the
    control plane); the message is for humans and may change.
    """

    reason: ClassVar[str] = "verification_failed"


class MalformedError(VerificationError):
    """The envelope, its payload or a key set does not have the required shape."""

    reason: ClassVar[str] = "malformed"


class UnknownKeyError(VerificationError):
    """No signature was made by a key of the trusted key set."""

    reason: ClassVar[str] = "unknown_kid"


class KeyRetiredError(VerificationError):
    """The only signatures by trusted keys are by keys past their ``not_after``."""

    reason: ClassVar[str] = "key_retired"


class BadSignatureError(VerificationError):
    """A signature by a trusted key does not verify over the payload."""

    reason: ClassVar[str] = "bad_signature"


class ExpiredError(VerificationError):
    """The payload's ``expires_at`` has passed."""

    reason: ClassVar[str] = "expired"


class NotYetValidError(VerificationError):
    """The payload's ``not_before`` or ``issued_at`` lies in the future beyond the allowed clock skew."""

    reason: ClassVar[str] = "not_yet_valid"


class WrongEnvironmentError(VerificationError):
    """The payload is for another environment than the one expected."""

    reason: ClassVar[str] = "wrong_environment"


class StaleKeySetError(VerificationError):
    """A key set update does not have a greater version than the pinned set (stale or replayed)."""

    reason: ClassVar[str] = "stale_keyset"


class WrongOrganizationError(VerificationError):
    """A key set update is for another organization than the pinned set."""

    reason: ClassVar[str] = "wrong_organization"
