"""RFC 9457 problem details, the one error shape of the REST API."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ["PROBLEM_CONTENT_TYPE", "FieldError", "Problem"]

PROBLEM_CONTENT_TYPE = "application/problem+json"


class FieldError(msgspec.Struct, kw_only=True):
    """One invalid field of a request: where it is and what is wrong with it."""

    field: str
    message: str
    source: str = "body"


class Problem(msgspec.Struct, kw_only=True, omit_defaults=True):
    """An RFC 9457 problem document.

    ``type`` is a stable URN per kind of problem, so clients can branch on it without parsing text.
    """

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    request_id: str | None = None
    errors: list[FieldError] | None = None
    #: Pipeline validation diagnostics (``shared.spec.Diagnostic`` objects), on 422s from promote.
    diagnostics: list[Any] | None = None
