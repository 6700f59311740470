"""Token secrets: random, prefixed (so secret scanners recognise leaks), stored only as SHA-256."""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass

__all__ = ["IssuedSecret", "TokenKind", "digest_token", "digests_match", "issue_secret"]


class TokenKind(enum.StrEnum):
    """Each credential kind has its own recognisable prefix."""

    PERSONAL = "byteor_pat_"
    SESSION = "byteor_ses_"
    ENROLLMENT = "byteor_enr_"
    AGENT_KEY = "byteor_agk_"

    @classmethod
    def of(cls, token: str) -> TokenKind | None:
        """The kind a presented token claims to be, from its prefix."""
        for kind in cls:
            if token.startswith(kind.value):
                return kind
        return None


@dataclass(frozen=True, slots=True)
class IssuedSecret:
    """A new secret: ``token`` is shown to its owner once; only ``digest`` is stored."""

    token: str
    digest: str
    hint: str


def digest_token(token: str) -> str:
    """The hex SHA-256 of a token, which is what the database stores and looks up."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def digests_match(stored: str, presented_token: str) -> bool:
    """Constant-time comparison of a stored digest with a presented token."""
    return hmac.compare_digest(stored, digest_token(presented_token))


def issue_secret(kind: TokenKind) -> IssuedSecret:
    """Mint a token with 256 bits of randomness."""
    token = kind.value + secrets.token_urlsafe(32)
    return IssuedSecret(
        token=token, digest=digest_token(token), hint=f"{kind.value}...{token[-4:]}"
    )
