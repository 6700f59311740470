"""Who is calling: the identity the authentication middleware attaches to a request."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime  # noqa: TC003 - Litestar resolves these annotations at runtime

from shared.roles import PrincipalKind

__all__ = ["AgentPrincipal", "EnrollmentCredential", "Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user or service account, and the token it presented."""

    user_id: str
    kind: PrincipalKind
    token_id: str
    service_org_id: str | None = None
    #: When the presented token expires (``None``: it does not).
    token_expires_at: datetime | None = None
    #: Whether the token is a login session (``byteor_ses_``) rather than an API token.
    session: bool = False

    @property
    def is_service_account(self) -> bool:
        return self.kind is PrincipalKind.SERVICE


@dataclass(frozen=True, slots=True)
class AgentPrincipal:
    """An agent authenticated by its runtime key."""

    agent_id: str
    key_id: str
    org_id: str
    env_id: str
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class EnrollmentCredential:
    """A presented enrollment token; the enroll service checks and consumes it atomically."""

    token: str

    def __repr__(self) -> str:  # never show the secret in logs or tracebacks
        return "EnrollmentCredential(token=<redacted>)"
