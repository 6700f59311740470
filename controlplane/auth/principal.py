"""Who is calling: the identity the authentication middleware attaches to a request."""

from __future__ import annotations

from dataclasses import dataclass

from shared.roles import PrincipalKind

__all__ = ["Principal"]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user or service account, and the token it presented."""

    user_id: str
    kind: PrincipalKind
    token_id: str
    service_org_id: str | None = None

    @property
    def is_service_account(self) -> bool:
        return self.kind is PrincipalKind.SERVICE
