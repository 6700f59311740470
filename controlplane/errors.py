"""Domain errors and the one place that renders every error as RFC 9457 problem+json.

Exception tree::

    DomainError                 raised by services; carries status, title and a stable type
    ├── Invalid         422     well-formed request that breaks a rule
    ├── BadRequest      400     malformed parameters (cursor, limit, ...)
    ├── Unauthorized    401     missing, unknown, expired or revoked credential
    ├── Forbidden       403     authenticated but the role or scope is insufficient
    ├── NotFound        404     absent, or invisible to the caller (never a 403 that leaks existence)
    ├── PreconditionFailed 412  stale If-Match revision
    ├── Conflict        409     duplicate name, illegal state change, last owner removal
    ├── TooManyRequests 429     a cap is reached (carries Retry-After)
    ├── BadGateway      502     an upstream (the OIDC provider) failed or answered nonsense
    └── ServiceUnavailable 503  a feature is not configured or not ready

Litestar's own ``HTTPException`` family (validation errors, 404/405 routing, 413 body caps) is
rendered by the same function. A database that is momentarily out of reach (its connection pool
exhausted, SQLite's write lock held past the busy timeout, a lost connection) is a 503 with
``Retry-After``: the request did nothing and may be sent again. Anything else becomes a 500
without internals.
"""

from __future__ import annotations

import logging
import random
import re
from typing import TYPE_CHECKING, Any, ClassVar

from litestar import Request, Response
from litestar.exceptions import HTTPException, InternalServerException, ValidationException
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from shared.problem import PROBLEM_CONTENT_TYPE, FieldError, Problem

if TYPE_CHECKING:
    from litestar.types import ExceptionHandlersMap, Scope

__all__ = [
    "DATABASE_RETRY_AFTER_SECONDS",
    "BadGateway",
    "BadRequest",
    "Conflict",
    "DomainError",
    "Forbidden",
    "Invalid",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "ServiceUnavailable",
    "TooManyRequests",
    "Unauthorized",
    "database_unavailable",
    "error_response",
    "exception_handlers",
    "problem_response",
    "request_id_of",
    "scope_request_id",
]

logger = logging.getLogger("byteor.controlplane")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class DomainError(Exception):
    """Base of the errors services raise; each subclass fixes the HTTP status."""

    status_code: ClassVar[int] = 400
    title: ClassVar[str] = "Bad Request"
    slug: ClassVar[str] = "bad-request"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        diagnostics: list[Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.diagnostics = diagnostics


class BadRequest(DomainError):
    status_code = 400
    title = "Bad Request"
    slug = "bad-request"


class Invalid(DomainError):
    status_code = 422
    title = "Unprocessable Content"
    slug = "invalid"


class Unauthorized(DomainError):
    status_code = 401
    title = "Unauthorized"
    slug = "unauthorized"

    def __init__(self, detail: str, *, error: str | None = "invalid_token") -> None:
        challenge = 'Bearer realm="byteor"'
        if error:
            challenge += f', error="{error}"'
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class PreconditionFailed(DomainError):
    status_code = 412
    title = "Precondition Failed"
    slug = "precondition-failed"


class PayloadTooLarge(DomainError):
    status_code = 413
    title = "Content Too Large"
    slug = "payload-too-large"


class TooManyRequests(DomainError):
    status_code = 429
    title = "Too Many Requests"
    slug = "rate-limited"

    def __init__(
        self, detail: str, *, retry_after: int, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail, headers={**(headers or {}), "Retry-After": str(retry_after)})


class Forbidden(DomainError):
    status_code = 403
    title = "Forbidden"
    slug = "forbidden"


class NotFound(DomainError):
    status_code = 404
    title = "Not Found"
    slug = "not-found"


class Conflict(DomainError):
    status_code = 409
    title = "Conflict"
    slug = "conflict"


class BadGateway(DomainError):
    status_code = 502
    title = "Bad Gateway"
    slug = "bad-gateway"


class ServiceUnavailable(DomainError):
    status_code = 503
    title = "Service Unavailable"
    slug = "unavailable"


_HTTP_SLUGS = {
    400: ("Bad Request", "bad-request"),
    401: ("Unauthorized", "unauthorized"),
    403: ("Forbidden", "forbidden"),
    404: ("Not Found", "not-found"),
    405: ("Method Not Allowed", "method-not-allowed"),
    412: ("Precondition Failed", "precondition-failed"),
    409: ("Conflict", "conflict"),
    413: ("Content Too Large", "payload-too-large"),
    415: ("Unsupported Media Type", "unsupported-media-type"),
    422: ("Unprocessable Content", "invalid"),
    429: ("Too Many Requests", "rate-limited"),
    500: ("Internal Server Error", "internal"),
    503: ("Service Unavailable", "unavailable"),
}


def scope_request_id(scope: Scope) -> str:
    """The request id of ``scope``: the caller's ``X-Request-ID`` when sane, else a new one.

    Memoised in the scope's state, so every layer (logs, metrics, errors, the response header)
    sees the same id. Works on the raw ASGI scope: it runs on every request.
    """
    state = scope.setdefault("state", {})
    existing = state.get("request_id")
    if isinstance(existing, str):
        return existing
    request_id = None
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            incoming = value.decode("latin-1")
            if _REQUEST_ID_RE.match(incoming):
                request_id = incoming
            break
    if request_id is None:
        # A correlation id, not a secret: the module PRNG is enough (and reseeded after fork).
        request_id = f"{random.getrandbits(64):016x}"
    state["request_id"] = request_id
    return request_id


def request_id_of(request: Request[Any, Any, Any]) -> str:
    """The request id of ``request`` (see :func:`scope_request_id`)."""
    return scope_request_id(request.scope)


def problem_response(
    request: Request[Any, Any, Any],
    *,
    status: int,
    detail: str | None,
    slug: str | None = None,
    title: str | None = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
    diagnostics: list[Any] | None = None,
) -> Response[Problem]:
    """Build the problem+json response every error goes through."""
    default_title, default_slug = _HTTP_SLUGS.get(status, ("Error", "error"))
    request_id = request_id_of(request)
    problem = Problem(
        type=f"urn:byteor:problem:{slug or default_slug}",
        title=title or default_title,
        status=status,
        detail=detail,
        instance=request.url.path,
        request_id=request_id,
        errors=errors or None,
        diagnostics=diagnostics,
    )
    return Response(
        content=problem,
        status_code=status,
        media_type=PROBLEM_CONTENT_TYPE,
        headers={**(headers or {}), "X-Request-ID": request_id},
    )


_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]+)`")
_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`$")


def _field_errors(exc: ValidationException) -> list[FieldError]:
    errors: list[FieldError] = []
    extra = exc.extra if isinstance(exc.extra, list) else []
    for item in extra:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", "invalid value"))
        source = str(item.get("source") or "body")
        field = str(item.get("key") or "")
        if (named := _NAMED_FIELD.search(message)) is not None:
            field = named.group(1)
        if (at := _AT_PATH.search(message)) is not None:
            field = at.group(1) or field
            message = message[: at.start()]
        if field == "data":
            field = "$"
        errors.append(FieldError(field=field, message=message, source=source))
    return errors


def _on_domain_error(request: Request[Any, Any, Any], exc: DomainError) -> Response[Problem]:
    return problem_response(
        request,
        status=exc.status_code,
        detail=exc.detail,
        slug=exc.slug,
        title=exc.title,
        errors=exc.errors,
        headers=exc.headers,
        diagnostics=exc.diagnostics,
    )


#: What Litestar raises (as a 500) when the client goes away while its body streams in.
_CLIENT_GONE = "client disconnected prematurely"


def _on_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Problem]:
    status = exc.status_code
    if isinstance(exc, InternalServerException) and exc.detail == _CLIENT_GONE:
        return _on_client_gone(request)
    if status >= 500:
        return _on_unexpected(request, exc)
    headers = dict(exc.headers or {})
    if isinstance(exc, ValidationException):
        errors = _field_errors(exc)
        if errors:
            listed = "; ".join(f"{e.field}: {e.message}" for e in errors)
            return problem_response(
                request,
                status=400,
                detail=f"Invalid request: {listed}",
                slug="validation",
                errors=errors,
                headers=headers,
            )
        return problem_response(request, status=400, detail=exc.detail, headers=headers)
    detail = exc.detail
    if status == 413:
        detail = "Request body is larger than this route accepts"
    return problem_response(request, status=status, detail=detail, headers=headers)


#: What a 503 for a busy or unreachable database asks the client to wait, in seconds.
DATABASE_RETRY_AFTER_SECONDS = 2


def database_unavailable(exc: BaseException) -> str | None:
    """Why ``exc`` means the database is momentarily out of reach, or None if it does not.

    Only failures that say nothing about the request qualify: the pool had no connection in
    time, SQLite's lock stayed held past the busy timeout, or the connection was lost. Every
    other database error (a constraint, a bad statement) stays a 500, because retrying it
    would fail again.
    """
    if isinstance(exc, PoolTimeout):
        return "pool"
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return "connection"
    if isinstance(exc, OperationalError):
        message = str(exc.orig).lower()
        if "locked" in message or "busy" in message:
            return "locked"
        if any(word in message for word in ("connect", "closed", "terminat", "too many")):
            return "connection"
    return None


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Problem]:
    reason = database_unavailable(exc)
    if reason is not None:
        return _on_database_unavailable(request, exc, reason)
    request_id = request_id_of(request)
    logger.error(
        "unhandled error",
        exc_info=exc,
        extra={"request_id": request_id, "path": request.url.path},
    )
    return problem_response(
        request,
        status=500,
        detail=f"An unexpected error occurred; quote request id {request_id} when reporting it",
    )


def _on_client_gone(request: Request[Any, Any, Any]) -> Response[Problem]:
    """The client hung up before its body arrived: nothing failed here, and nobody is left to
    answer (a fleet's timed-out requests must not read as server errors in the log)."""
    logger.info(
        "client disconnected before its request body arrived",
        extra={"request_id": request_id_of(request), "path": request.url.path},
    )
    return problem_response(
        request, status=400, detail="The client disconnected before its request body arrived"
    )


def _on_database_unavailable(
    request: Request[Any, Any, Any], exc: Exception, reason: str
) -> Response[Problem]:
    request_id = request_id_of(request)
    # A warning without the traceback: under overload this fires for many requests at once.
    logger.warning(
        "database unavailable (%s: %s); answered 503",
        reason,
        type(exc).__name__,
        extra={"request_id": request_id, "path": request.url.path},
    )
    return problem_response(
        request,
        status=503,
        slug="database-unavailable",
        detail=(
            "The database is busy or unreachable; nothing was changed. "
            f"Retry after {DATABASE_RETRY_AFTER_SECONDS} seconds"
        ),
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


def error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The answer :data:`exception_handlers` give ``exc``, for code that runs outside routing."""
    for kind in type(exc).__mro__:
        handler = exception_handlers.get(kind)
        if handler is not None:
            return handler(request, exc)
    return _on_unexpected(request, exc)


exception_handlers: ExceptionHandlersMap = {
    DomainError: _on_domain_error,
    HTTPException: _on_http_exception,
    Exception: _on_unexpected,
}
