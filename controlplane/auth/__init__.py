"""Credentials: bearer tokens, the authentication middleware, and the caller's identity."""

from __future__ import annotations

from controlplane.auth.principal import Principal
from controlplane.auth.secrets import TokenKind, digest_token, issue_secret

__all__ = ["Principal", "TokenKind", "digest_token", "issue_secret"]
