"""The agent's exception tree.

Whether a failure is worth retrying is a property of its type (``retryable``), so callers branch
on classes, never on status codes::

    AgentError                      base of every agent error
    ├── TransientError              retryable: network errors, timeouts, 408, 429, 5xx
    │                               (carries ``retry_after`` from a Retry-After header)
    ├── PermanentError              not retried: retrying cannot change the answer
    │   ├── Unauthorized            401: agent key invalid/revoked/for another agent, bad token
    │   ├── Forbidden               403: the key lacks the route's scope
    │   ├── NotFoundError           404
    │   ├── RequestRejected         any other 4xx (or an unexpected non-2xx status)
    │   └── InvalidResponse         a 2xx whose body is not the expected document
    │       └── BundleTooLarge      a bundle download sent more bytes than allowed
    └── StateError                  the local state file is unreadable or corrupt

HTTP errors carry the response ``status`` and, when the server sent an RFC 9457
``application/problem+json`` body, its ``detail``, ``title``, ``type`` (as ``problem_type``) and
``request_id``. No error ever carries a credential.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AgentError",
    "BundleTooLarge",
    "Forbidden",
    "InvalidResponse",
    "NotFoundError",
    "PermanentError",
    "RequestRejected",
    "StateError",
    "TransientError",
    "Unauthorized",
]


class AgentError(Exception):
    """Base of every agent error.

    Attributes:
        status: The HTTP status of the response, or ``None`` if there was none.
        detail: The problem document's ``detail``, if the server sent one.
        title: The problem document's ``title``, if the server sent one.
        problem_type: The problem document's ``type`` URN, if the server sent one.
        request_id: The server's request id for the failed call, if it sent one.
    """

    #: Whether retrying the same request may succeed.
    retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        detail: str | None = None,
        title: str | None = None,
        problem_type: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.title = title
        self.problem_type = problem_type
        self.request_id = request_id


class TransientError(AgentError):
    """A failure that may go away: network errors, timeouts, 408, 429 and 5xx responses.

    Attributes:
        retry_after: Seconds the server asked us to wait (``Retry-After``), if it did.
        maybe_processed: ``False`` only when the server certainly did not act on the request
            (the connection was never made, or it was rate limited); a non-idempotent request is
            retried only then.
    """

    retryable: ClassVar[bool] = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        maybe_processed: bool = True,
        status: int | None = None,
        detail: str | None = None,
        title: str | None = None,
        problem_type: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(
            message,
            status=status,
            detail=detail,
            title=title,
            problem_type=problem_type,
            request_id=request_id,
        )
        self.retry_after = retry_after
        self.maybe_processed = maybe_processed


class PermanentError(AgentError):
    """A failure that retrying the same request cannot fix."""


class Unauthorized(PermanentError):
    """401: the credential is invalid, revoked or belongs to another agent."""


class Forbidden(PermanentError):
    """403: the credential is valid but lacks the scope the route requires."""


class NotFoundError(PermanentError):
    """404: the resource (or the agent itself) does not exist."""


class RequestRejected(PermanentError):
    """Any other 4xx (or unexpected non-2xx) status; ``status`` and ``detail`` say why."""


class InvalidResponse(PermanentError):
    """A successful response whose body is not the document the protocol promises."""


class StateError(AgentError):
    """The agent's local state file cannot be read or is corrupt."""


class BundleTooLarge(InvalidResponse):
    """A bundle download sent more bytes than the caller allowed; it was aborted and discarded."""
