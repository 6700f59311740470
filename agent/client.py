"""The agent's HTTP client of the control plane API.

One :class:`httpx.AsyncClient` per :class:`ControlPlaneClient`; close it with ``async with`` or
:meth:`ControlPlaneClient.aclose`. Every response is translated into the :mod:`agent.errors`
tree in one place (``_send``), and every call is retried on :class:`~agent.errors.TransientError`
by the policy of :mod:`agent.retry`. Credentials (the agent key, the enrollment token) travel
only in the ``Authorization`` header and never appear in logs or error messages.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final, Literal, NamedTuple, Self, TypeVar
from urllib.parse import quote

import httpx
import msgspec

from agent.errors import (
    Forbidden,
    InvalidResponse,
    NotFoundError,
    PermanentError,
    RequestRejected,
    TransientError,
    Unauthorized,
)
from agent.retry import DEFAULT_BACKOFF_MULTIPLIER, Sleep, build_retrying, parse_retry_after
from shared import __version__
from shared.agents import AgentRecord, EnrollRequest, EnrollResponse, Heartbeat, HeartbeatResponse
from shared.signing import Envelope

if TYPE_CHECKING:
    from types import TracebackType

    from agent.settings import AgentSettings

__all__ = ["USER_AGENT", "ControlPlaneClient"]

#: The ``User-Agent`` of every request.
USER_AGENT: Final = f"byteor-agent/{__version__}"

_T = TypeVar("_T")
_MAX_DETAIL_CHARS: Final = 500
#: Transport errors raised before the request reached the server.
_NOT_SENT: Final = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

logger = logging.getLogger(__name__)


class _Problem(msgspec.Struct, kw_only=True):
    """The fields of an RFC 9457 problem document the agent uses (all optional)."""

    type: str | None = None
    title: str | None = None
    detail: str | None = None
    request_id: str | None = None


class _Credential(NamedTuple):
    kind: Literal["agent key", "enrollment token"]
    secret: str


_PROBLEM: Final = msgspec.json.Decoder(_Problem)
_ENROLL: Final = msgspec.json.Decoder(EnrollResponse)
_RECORD: Final = msgspec.json.Decoder(AgentRecord)
_HEARTBEAT: Final = msgspec.json.Decoder(HeartbeatResponse)
_ENVELOPE: Final = msgspec.json.Decoder(Envelope)
_ENCODER: Final = msgspec.json.Encoder()


def _segment(value: str) -> str:
    """Quote one path segment (ids come from configuration and must not alter the path)."""
    return quote(value, safe="")


def _read_problem(response: httpx.Response, secret: str) -> _Problem:
    """The response's problem document (empty if it has none), with ``secret`` redacted."""
    try:
        problem = _PROBLEM.decode(response.content)
    except (msgspec.MsgspecError, RecursionError):
        problem = _Problem()
    if problem.detail is not None:
        detail = problem.detail.replace(secret, "***") if secret else problem.detail
        problem.detail = detail[:_MAX_DETAIL_CHARS]
    if problem.request_id is None:
        problem.request_id = response.headers.get("x-request-id")
    return problem


class ControlPlaneClient:
    """Calls the control plane's agent API with retries and typed errors.

    Enrollment authenticates with an enrollment token; every other call with the agent key set by
    :meth:`set_credentials` (call it again when the key rotates).
    """

    def __init__(
        self,
        settings: AgentSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep | None = None,
        backoff_multiplier: float = DEFAULT_BACKOFF_MULTIPLIER,
    ) -> None:
        """Create the client (no I/O happens until the first call).

        Args:
            settings: Base URL, timeout and retry limits.
            transport: An httpx transport to use instead of the network (tests).
            sleep: Async sleep used between retries (tests record instead of sleeping).
            backoff_multiplier: Width in seconds of the first backoff window.
        """
        self._settings = settings
        self._sleep = sleep
        self._backoff_multiplier = backoff_multiplier
        self._credentials: tuple[str, str] | None = None
        self._http = httpx.AsyncClient(
            base_url=settings.api_base_url,
            timeout=httpx.Timeout(settings.http_timeout_seconds),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool; the client is unusable afterwards."""
        await self._http.aclose()

    def __repr__(self) -> str:
        base_url = self._settings.api_base_url
        return f"ControlPlaneClient(base_url={base_url!r}, agent_id={self.agent_id!r})"

    @property
    def agent_id(self) -> str | None:
        """The agent the client acts as, or ``None`` before :meth:`set_credentials`."""
        return self._credentials[0] if self._credentials is not None else None

    def set_credentials(self, agent_id: str, api_key: str) -> None:
        """Act as ``agent_id`` with ``api_key`` from the next call on (also after a key rotation).

        Args:
            agent_id: The agent's id.
            api_key: Its runtime API key.

        Raises:
            ValueError: If either is empty.
        """
        if not agent_id or not api_key:
            raise ValueError("agent id and api key must not be empty")
        self._credentials = (agent_id, api_key)

    async def enroll(
        self,
        token: str,
        org_id: str,
        project_id: str,
        environment_id: str,
        request: EnrollRequest,
    ) -> EnrollResponse:
        """Enroll this host with an enrollment token.

        Enrollment is not idempotent, so it is retried only when the server certainly did not
        act on the request (connection failures, 429).

        Args:
            token: The enrollment token (sent as ``Authorization: Bearer``; never the agent key).
            org_id: The organization to enroll into.
            project_id: The project to enroll into.
            environment_id: The environment to enroll into.
            request: Name, hostname and version to register.

        Returns:
            The new agent's id, its API key (shown only this once) and the signed key set to pin.

        Raises:
            AgentError: A subclass per failure (see :mod:`agent.errors`).
        """
        path = (
            f"/api/v1/orgs/{_segment(org_id)}/projects/{_segment(project_id)}"
            f"/environments/{_segment(environment_id)}/agents"
        )
        credential = _Credential("enrollment token", token)
        body = _ENCODER.encode(request)
        return await self._call("POST", path, _ENROLL, credential, body, idempotent=False)

    async def get_self(self) -> AgentRecord:
        """Fetch this agent's own record.

        Raises:
            AgentError: A subclass per failure (see :mod:`agent.errors`).
        """
        path, credential = self._agent_route("")
        return await self._call("GET", path, _RECORD, credential)

    async def heartbeat(self, hb: Heartbeat) -> HeartbeatResponse:
        """Send a heartbeat.

        Args:
            hb: The heartbeat to report.

        Returns:
            The control plane's answer (next interval, pending work, rotated key).

        Raises:
            AgentError: A subclass per failure (see :mod:`agent.errors`).
        """
        path, credential = self._agent_route("/heartbeat")
        return await self._call("POST", path, _HEARTBEAT, credential, _ENCODER.encode(hb))

    async def signing_keys(self) -> Envelope:
        """Fetch the organization's current signed key set (verify it before pinning it).

        Raises:
            AgentError: A subclass per failure (see :mod:`agent.errors`).
        """
        path, credential = self._agent_route("/signing-key")
        return await self._call("GET", path, _ENVELOPE, credential)

    def _agent_route(self, suffix: str) -> tuple[str, _Credential]:
        if self._credentials is None:
            raise RuntimeError("no agent credentials: call set_credentials() first")
        agent_id, api_key = self._credentials
        return f"/api/v1/agents/{_segment(agent_id)}{suffix}", _Credential("agent key", api_key)

    async def _call(
        self,
        method: str,
        path: str,
        decoder: msgspec.json.Decoder[_T],
        credential: _Credential,
        body: bytes | None = None,
        *,
        idempotent: bool = True,
    ) -> _T:
        retrying = build_retrying(
            max_attempts=self._settings.max_retry_attempts,
            max_backoff=self._settings.max_backoff_seconds,
            multiplier=self._backoff_multiplier,
            idempotent=idempotent,
            sleep=self._sleep,
        )
        return await retrying(self._send, method, path, decoder, credential, body)

    async def _send(
        self,
        method: str,
        path: str,
        decoder: msgspec.json.Decoder[_T],
        credential: _Credential,
        body: bytes | None,
    ) -> _T:
        """Make one attempt; the only place responses become results or :mod:`agent.errors`."""
        what = f"{method} {path}"
        headers = {"Authorization": f"Bearer {credential.secret}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = await self._http.request(method, path, content=body, headers=headers)
        except httpx.TransportError as exc:  # connect/read/write errors and timeouts
            raise TransientError(
                f"{what}: {type(exc).__name__}: {exc}",
                maybe_processed=not isinstance(exc, _NOT_SENT),
            ) from exc
        except httpx.RequestError as exc:  # undecodable content-encoding and the like
            raise InvalidResponse(f"{what}: {type(exc).__name__}: {exc}") from exc

        status = response.status_code
        if 200 <= status < 300:
            try:
                return decoder.decode(response.content)
            except (msgspec.MsgspecError, RecursionError) as exc:
                raise InvalidResponse(
                    f"{what}: {status} response is not the expected document: {exc}",
                    status=status,
                ) from exc

        problem = _read_problem(response, credential.secret)
        reason = problem.detail or problem.title or response.reason_phrase
        message = f"{what}: {status} {reason}"
        if status in {408, 429} or status >= 500:
            raise TransientError(
                message,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
                maybe_processed=status != 429,
                status=status,
                detail=problem.detail,
                title=problem.title,
                problem_type=problem.type,
                request_id=problem.request_id,
            )
        error: type[PermanentError] = RequestRejected
        if status == 401:
            if credential.kind == "agent key":
                hint = "re-enroll or fix BYTEOR_AGENT_API_KEY"
            else:
                hint = "create a new token and set BYTEOR_ENROLLMENT_TOKEN"
            logger.error("%s rejected (401): %s — %s", credential.kind, reason, hint)
            error = Unauthorized
        elif status == 403:
            logger.error(
                "%s lacks scope (403): %s — grant the scope %s needs", credential.kind, reason, what
            )
            error = Forbidden
        elif status == 404:
            error = NotFoundError
        raise error(
            message,
            status=status,
            detail=problem.detail,
            title=problem.title,
            problem_type=problem.type,
            request_id=problem.request_id,
        )
