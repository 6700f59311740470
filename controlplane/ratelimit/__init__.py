"""Sliding-window rate limits (the ``limits`` library, sliding-window-counter strategy)."""

from __future__ import annotations

from controlplane.ratelimit.limiter import Budgets, RateLimiter
from controlplane.ratelimit.middleware import AddressThrottleMiddleware, CredentialLimitMiddleware

__all__ = ["AddressThrottleMiddleware", "Budgets", "CredentialLimitMiddleware", "RateLimiter"]
