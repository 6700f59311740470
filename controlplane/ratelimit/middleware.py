"""Two ASGI layers around authentication.

- :class:`AddressThrottleMiddleware` (outside authentication): unauthenticated callers spend the
  ``anonymous`` budget of their address; every failed authentication (401) spends it too, and a
  spent budget refuses even credentialed calls from that address, so spraying guessed tokens is
  throttled. Failed enrollments also spend the address's ``enrollment_failures`` budget.
- :class:`CredentialLimitMiddleware` (inside authentication): each credential spends its own
  budget, keyed by credential id: API/session tokens ``bearer``, agent keys ``agent`` or
  ``artifact_upload``, enrollment tokens ``enrollment`` per environment.

Limited responses carry ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset`` (unix seconds); a spent budget is a 429 problem with ``Retry-After``.
Health, readiness, metrics and the OpenAPI schema are exempt.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from litestar.enums import ScopeType
from litestar.exceptions import HTTPException

from controlplane.auth.principal import AgentPrincipal, EnrollmentCredential, Principal
from controlplane.errors import DomainError, TooManyRequests

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from controlplane.ratelimit.limiter import RateLimiter, Verdict

__all__ = [
    "AddressThrottleMiddleware",
    "CredentialLimitMiddleware",
    "client_address",
    "refused",
    "with_rate_limit_headers",
]

EXEMPT = re.compile(r"^/(healthz|readyz|metrics)/?$|^/schema(/|$)")
ENROLL = re.compile(r"^/api/v1/orgs/[^/]+/projects/[^/]+/environments/[^/]+/agents/?$")


def _limiter(scope: Scope) -> RateLimiter:
    limiter: RateLimiter = scope["app"].state.rate_limiter
    return limiter


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


#: Unauthenticated routes that always spend the address's budget, whatever the request carries.
ALWAYS_ANONYMOUS = re.compile(r"^/auth/(login|callback)/?$")


def _has_credential(scope: Scope) -> bool:
    """An ``Authorization`` header or a login session cookie (on routes that take credentials)."""
    if ALWAYS_ANONYMOUS.match(scope["path"]):
        return False
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            return True
        if name == b"cookie" and any(
            part.strip().startswith(b"byteor_session=") for part in value.split(b";")
        ):
            return True
    return False


def refused(verdict: Verdict, detail: str) -> TooManyRequests:
    return TooManyRequests(detail, retry_after=verdict.retry_after, headers=verdict.headers())


def with_rate_limit_headers(send: Send, headers: dict[str, str], status: list[int]) -> Send:
    """``send`` that records the response status and adds ``headers`` to the response."""
    raw = [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
    ]

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            status.append(int(message["status"]))
            if raw:
                # No inner layer sets these names: appending is replacing, without a scan.
                message["headers"] = [*message.get("headers", ()), *raw]
        await send(message)

    return wrapped


class AddressThrottleMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP or EXEMPT.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        limiter = _limiter(scope)
        address = client_address(scope)
        enrolling = scope.get("method") == "POST" and ENROLL.match(scope["path"]) is not None
        if (
            enrolling
            and not (verdict := await limiter.peek("enrollment_failures", address)).allowed
        ):
            raise refused(verdict, "Too many failed enrollments from this address; slow down")
        headers: dict[str, str] = {}
        credentialed = _has_credential(scope)
        if credentialed:
            verdict = await limiter.peek("anonymous", address)
            if not verdict.allowed:
                raise refused(verdict, "Too many failed authentications from this address")
        else:
            verdict = await limiter.hit("anonymous", address)
            if not verdict.allowed:
                raise refused(verdict, "Too many unauthenticated requests from this address")
            headers = verdict.headers()
        status: list[int] = []
        try:
            await self.app(scope, receive, with_rate_limit_headers(send, headers, status))
        except Exception as exc:
            # Errors raised by inner middleware (authentication) are rendered outside this layer:
            # read the status off the exception and attach the headers to it.
            status.append(int(getattr(exc, "status_code", 500)))
            if isinstance(exc, (DomainError, HTTPException)) and headers:
                exc.headers = {**(exc.headers or {}), **headers}
            raise
        finally:
            failed = bool(status) and status[0] == 401
            if failed and credentialed:
                await limiter.hit("anonymous", address)
            if failed and enrolling:
                await limiter.hit("enrollment_failures", address)


class CredentialLimitMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        user: Any = scope.get("user")
        if isinstance(user, Principal):
            bucket, key = "bearer", user.token_id
        elif isinstance(user, AgentPrincipal):
            bucket = (
                "artifact_upload" if scope["path"].rstrip("/").endswith("/artifacts") else "agent"
            )
            key = user.key_id
        elif isinstance(user, EnrollmentCredential):
            bucket, key = "enrollment", str(scope.get("path_params", {}).get("env_id", ""))
        else:
            await self.app(scope, receive, send)
            return
        verdict = await _limiter(scope).hit(bucket, key)
        if not verdict.allowed:
            raise refused(verdict, f"Rate limit of the {bucket} budget reached; retry later")
        await self.app(scope, receive, with_rate_limit_headers(send, verdict.headers(), []))
