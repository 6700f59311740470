"""OpenAPI additions: the problem+json error responses every API operation can give.

Litestar documents what a handler returns; the errors (RFC 9457 problems) and the rate-limit
headers come from shared layers, so they are added to the generated document here, once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    Schema,
)

if TYPE_CHECKING:
    from litestar import Litestar

__all__ = ["PROBLEM_SCHEMA", "document_errors"]

EXEMPT = ("/healthz", "/readyz", "/metrics")

PROBLEM_SCHEMA = Schema(
    type=OpenAPIType.OBJECT,
    description="RFC 9457 problem details",
    required=["type", "title", "status"],
    properties={
        "type": Schema(type=OpenAPIType.STRING, description="urn:byteor:problem:<kind>"),
        "title": Schema(type=OpenAPIType.STRING),
        "status": Schema(type=OpenAPIType.INTEGER),
        "detail": Schema(type=OpenAPIType.STRING),
        "instance": Schema(type=OpenAPIType.STRING),
        "request_id": Schema(type=OpenAPIType.STRING),
        "errors": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.OBJECT)),
        "diagnostics": Schema(type=OpenAPIType.ARRAY, items=Schema(type=OpenAPIType.OBJECT)),
    },
)


def _header(description: str) -> OpenAPIHeader:
    return OpenAPIHeader(schema=Schema(type=OpenAPIType.INTEGER), description=description)


RATE_HEADERS = {
    "X-RateLimit-Limit": _header("requests allowed in the window"),
    "X-RateLimit-Remaining": _header("requests left in the window"),
    "X-RateLimit-Reset": _header("unix time when the window frees up"),
}

ERRORS = {
    "400": "Malformed JSON, or an invalid field (errors[] names it)",
    "401": "Missing, unknown, expired or revoked credential (with WWW-Authenticate)",
    "403": "The role or scope is insufficient",
    "404": "Absent, or not visible to the caller",
    "409": "Conflicts with the current state",
    "413": "Body larger than the route accepts (4 MiB for API calls)",
    "429": "A rate limit or cap is reached; retry after Retry-After seconds",
}


def _problem(description: str, status: str) -> OpenAPIResponse:
    headers: dict[str, OpenAPIHeader | Reference] = dict(RATE_HEADERS) if status == "429" else {}
    if status == "429":
        headers["Retry-After"] = _header("seconds to wait before retrying")
    return OpenAPIResponse(
        description=description,
        headers=headers or None,
        content={
            "application/problem+json": OpenAPIMediaType(
                schema=Reference(ref="#/components/schemas/Problem")
            )
        },
    )


#: Further problems of the login routes (besides the shared ones).
LOGIN_ERRORS = {
    "502": "The identity provider is unreachable, answered nonsense or refused this client",
    "503": "Login is not configured on this server (BYTEOR_CLOUD_OIDC_*)",
}
#: Routes anyone may call: no credential is expected.
PUBLIC_ROUTES = ("/auth/login", "/auth/callback")


def document_errors(app: Litestar) -> None:
    """Add the shared error responses to every API operation of ``app``'s OpenAPI document."""
    schema = app.openapi_schema
    schemas = schema.components.schemas
    schemas["Problem"] = PROBLEM_SCHEMA
    for path, item in (schema.paths or {}).items():
        if path in EXEMPT:
            continue
        for method in ("get", "post", "put", "delete", "patch"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            responses = operation.responses or {}
            for status, description in ERRORS.items():
                if status == "413" and method in ("get", "delete"):
                    continue
                responses[status] = _problem(description, status)
            if path in PUBLIC_ROUTES:
                for status, description in LOGIN_ERRORS.items():
                    responses[status] = _problem(description, status)
            if path == "/auth/callback":
                responses["303"] = OpenAPIResponse(
                    description="Logged in: the same body, redirecting to the login's redirect_to",
                    headers={"Location": OpenAPIHeader(schema=Schema(type=OpenAPIType.STRING))},
                )
            if path in PUBLIC_ROUTES:
                operation.security = [{}]  # no credential (an empty requirement)
            operation.responses = responses
