"""The agent's HTTP client of the control plane API.

One :class:`httpx.AsyncClient` per :class:`ControlPlaneClient`; close it with ``async with`` or
:meth:`ControlPlaneClient.aclose`. Every response is translated into the :mod:`agent.errors`
tree in one place (``_send``), and every call is retried on :class:`~agent.errors.TransientError`
by the policy of :mod:`agent.retry`. Credentials (the agent key, the enrollment token) travel
only in the ``Authorization`` header and never appear in logs or error messages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
from typing import TYPE_CHECKING, BinaryIO, Final, Literal, NamedTuple, Self, TypeVar
from urllib.parse import quote, urlsplit

import httpx
import msgspec

from agent.errors import (
    BundleTooLarge,
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
from shared.agents import (
    AgentRecord,
    EnrollRequest,
    EnrollResponse,
    Heartbeat,
    HeartbeatResponse,
    IdentityKey,
)
from shared.artifacts import ArtifactMetadata, ArtifactReceipt
from shared.deployments import AgentDeployment, DeploymentReport
from shared.signing import Envelope

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path
    from types import TracebackType

    from httpx._types import RequestFiles

    from agent.config import AgentConfig

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
_DEPLOYMENT: Final = msgspec.json.Decoder(AgentDeployment)
_RECEIPT: Final = msgspec.json.Decoder(ArtifactReceipt)
_IDENTITY: Final = msgspec.json.Decoder(IdentityKey)
#: Most bytes of an error response body read during a streamed download.
_MAX_ERROR_BODY: Final = 64 * 1024
_DOWNLOAD_FILE_MODE: Final = 0o600
_ENCODER: Final = msgspec.json.Encoder()


def _segment(value: str) -> str:
    """Quote one path segment (ids come from configuration and must not alter the path)."""
    return quote(value, safe="")


def _read_problem(response: httpx.Response, secret: str, content: bytes | None = None) -> _Problem:
    """The response's problem document (empty if it has none), with ``secret`` redacted.

    ``content`` is the body when it was read separately (a streamed response).
    """
    try:
        problem = _PROBLEM.decode(response.content if content is None else content)
    except (msgspec.MsgspecError, RecursionError):
        problem = _Problem()
    if problem.detail is not None:
        detail = problem.detail.replace(secret, "***") if secret else problem.detail
        problem.detail = detail[:_MAX_DETAIL_CHARS]
    if problem.request_id is None:
        problem.request_id = response.headers.get("x-request-id")
    return problem


def tls_verification(base_url: str) -> ssl.SSLContext | bool:
    """How the client verifies TLS for ``base_url``.

    ``https``: the default CA bundle. A plain ``http`` control plane never speaks TLS, so its
    client gets a context that trusts no certificate at all instead: no CA bundle is parsed
    (about 1.5 MiB of the agent's memory), and should a TLS connection ever be attempted it
    fails closed rather than unverified.
    """
    if urlsplit(base_url).scheme.lower() == "https":
        return True
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, with nothing trusted


class ControlPlaneClient:
    """Calls the control plane's agent API with retries and typed errors.

    Enrollment authenticates with an enrollment token; every other call with the agent key set by
    :meth:`set_credentials` (call it again when the key rotates).
    """

    def __init__(
        self,
        settings: AgentConfig,
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
            verify=tls_verification(settings.api_base_url),
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

    async def register_identity(self, public_key: str) -> None:
        """Register the agent's artifact-signing public key (idempotent for the same key).

        Raises:
            RequestRejected: 409 when another key is registered (the agent must be re-enrolled).
            AgentError: A subclass per other failure (see :mod:`agent.errors`).
        """
        path, credential = self._agent_route("/identity-key")
        body = _ENCODER.encode(IdentityKey(public_key=public_key))
        await self._call("PUT", path, _IDENTITY, credential, body)

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

    async def get_deployment(
        self, wait: float = 0, etag: str | None = None
    ) -> tuple[AgentDeployment | None, str | None]:
        """Long-poll for this agent's newest deployment manifest.

        Args:
            wait: Seconds the control plane may hold the request open until something changes
                (sent as ``?wait=``); the HTTP timeout of the call is ``wait`` plus
                ``http_timeout_seconds``.
            etag: The ``ETag`` of the last answer, sent as ``If-None-Match``.

        Returns:
            ``(None, etag)`` when nothing changed (304), else the decoded document and the
            response's ``ETag`` (``None`` if it sent none).

        Raises:
            AgentError: A subclass per failure (see :mod:`agent.errors`).
        """
        wait = max(0.0, wait)
        path, credential = self._agent_route("/deployment")
        params = {"wait": f"{wait:g}"}
        headers = {"If-None-Match": etag} if etag else {}
        timeout = wait + self._settings.http_timeout_seconds

        async def attempt() -> tuple[AgentDeployment | None, str | None]:
            what = f"GET {path}"
            response = await self._request(
                "GET", path, credential, params=params, headers=headers, http_timeout=timeout
            )
            if response.status_code == 304:
                return None, response.headers.get("etag", etag)
            self._raise_for_status(response, what, credential)
            return self._decode(response, _DEPLOYMENT, what), response.headers.get("etag")

        return await self._retry(attempt)

    async def download_bundle(self, digest: str, destination: Path, max_bytes: int) -> int:
        """Stream a config bundle archive to ``destination`` without holding it in memory.

        ``destination`` is created (or truncated) with mode ``0600``; on any failure it is
        deleted, so a partial download never stays behind.

        Args:
            digest: The bundle's digest (``sha256:<hex>``) as in the deployment manifest.
            destination: The file to write (in a directory the caller owns).
            max_bytes: Most bytes accepted; the download is aborted as soon as more arrive.

        Returns:
            The number of bytes written.

        Raises:
            BundleTooLarge: If the body (or its declared ``Content-Length``) exceeds ``max_bytes``.
            AgentError: A subclass per other failure (see :mod:`agent.errors`).
        """
        path, credential = self._agent_route(f"/bundles/{quote(digest, safe=':')}")

        async def attempt() -> int:
            try:
                return await self._stream_to(path, credential, destination, max_bytes)
            except BaseException:
                _discard(destination)
                raise

        return await self._retry(attempt)

    async def report_deployment(self, report: DeploymentReport) -> None:
        """Report the progress of a deployment manifest on this agent.

        Args:
            report: The manifest's deployment id and sequence, its status and why.

        Raises:
            AgentError: A subclass per failure (see :mod:`agent.errors`).
        """
        path, credential = self._agent_route("/deployment")
        body = _ENCODER.encode(report)

        async def attempt() -> None:
            response = await self._request("POST", path, credential, body=body)
            self._raise_for_status(response, f"POST {path}", credential)

        await self._retry(attempt)

    async def upload_artifact(
        self, metadata: ArtifactMetadata, data_path: Path
    ) -> tuple[ArtifactReceipt, bool]:
        """Upload one artifact as ``multipart/form-data``, streaming the file from disk.

        The ``metadata`` part (``application/json``) is sent first, then the ``file`` part
        (``application/octet-stream``), read in chunks while it is sent. Uploads are idempotent
        (the control plane answers a repeated ``idempotency_key`` with the stored artifact), so
        timeouts and 5xx are retried; 429 waits for ``Retry-After``.

        Args:
            metadata: The signed metadata (see :func:`shared.artifacts.sign_metadata`).
            data_path: The artifact's bytes; reopened for every attempt.

        Returns:
            The receipt and whether the control plane already had the artifact (200 rather
            than 201).

        Raises:
            RequestRejected: 400 (bad metadata or signature) and 413 (too large): permanent.
            OSError: If ``data_path`` cannot be read.
            AgentError: A subclass per other failure (see :mod:`agent.errors`).
        """
        path, credential = self._agent_route("/artifacts")
        what = f"POST {path}"
        encoded = _ENCODER.encode(metadata)

        async def attempt() -> tuple[ArtifactReceipt, bool]:
            # Opening a local file is quick; httpx then reads it in 64 KiB chunks while sending.
            with data_path.open("rb") as handle:
                files: list[tuple[str, tuple[str | None, bytes | BinaryIO, str]]] = [
                    ("metadata", (None, encoded, "application/json")),
                    ("file", (metadata.filename, handle, "application/octet-stream")),
                ]
                response = await self._request("POST", path, credential, files=files)
            self._raise_for_status(response, what, credential)
            receipt = self._decode(response, _RECEIPT, what)
            return receipt, response.status_code == 200 or receipt.duplicate

        return await self._retry(attempt)

    async def _stream_to(
        self, path: str, credential: _Credential, destination: Path, max_bytes: int
    ) -> int:
        what = f"GET {path}"
        headers = {"Authorization": f"Bearer {credential.secret}", "Accept": "*/*"}
        try:
            async with self._http.stream("GET", path, headers=headers) as response:
                if not 200 <= response.status_code < 300:
                    content = await self._read_bounded(response)
                    self._raise_for_status(response, what, credential, content)
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_bytes:
                    raise BundleTooLarge(
                        f"{what}: Content-Length {declared} exceeds the limit of {max_bytes} bytes",
                        status=response.status_code,
                    )
                written = 0
                with _open_for_writing(destination) as sink:
                    async for chunk in response.aiter_bytes():
                        written += len(chunk)
                        if written > max_bytes:
                            raise BundleTooLarge(
                                f"{what}: more than {max_bytes} bytes; download aborted",
                                status=response.status_code,
                            )
                        sink.write(chunk)
                    sink.flush()
                    os.fsync(sink.fileno())
                return written
        except httpx.TransportError as exc:
            raise TransientError(f"{what}: {type(exc).__name__}: {exc}") from exc
        except httpx.RequestError as exc:
            raise InvalidResponse(f"{what}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    async def _read_bounded(response: httpx.Response) -> bytes:
        """Read at most :data:`_MAX_ERROR_BODY` bytes of a streamed (error) body."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            chunks.append(chunk)
            size += len(chunk)
            if size >= _MAX_ERROR_BODY:
                break
        return b"".join(chunks)[:_MAX_ERROR_BODY]

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
        async def attempt() -> _T:
            return await self._send(method, path, decoder, credential, body)

        return await self._retry(attempt, idempotent=idempotent)

    async def _retry(self, attempt: Callable[[], Awaitable[_T]], *, idempotent: bool = True) -> _T:
        """Run ``attempt`` under the retry policy of :mod:`agent.retry`."""
        retrying = build_retrying(
            max_attempts=self._settings.max_retry_attempts,
            max_backoff=self._settings.max_backoff_seconds,
            multiplier=self._backoff_multiplier,
            idempotent=idempotent,
            sleep=self._sleep,
        )
        result: _T = await retrying(attempt)
        return result

    async def _send(
        self,
        method: str,
        path: str,
        decoder: msgspec.json.Decoder[_T],
        credential: _Credential,
        body: bytes | None,
    ) -> _T:
        """Make one attempt of a JSON call."""
        what = f"{method} {path}"
        response = await self._request(method, path, credential, body=body)
        self._raise_for_status(response, what, credential)
        return self._decode(response, decoder, what)

    async def _request(
        self,
        method: str,
        path: str,
        credential: _Credential,
        *,
        body: bytes | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        http_timeout: float | None = None,
        files: RequestFiles | None = None,
    ) -> httpx.Response:
        """Send one request; transport failures become :mod:`agent.errors`.

        ``files`` sends a ``multipart/form-data`` body (parts in list order) instead of ``body``.
        """
        what = f"{method} {path}"
        all_headers = {**(headers or {}), "Authorization": f"Bearer {credential.secret}"}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        try:
            if http_timeout is None:
                return await self._http.request(
                    method, path, content=body, params=params, headers=all_headers, files=files
                )
            return await self._http.request(
                method,
                path,
                content=body,
                params=params,
                headers=all_headers,
                files=files,
                timeout=http_timeout,
            )
        except httpx.TransportError as exc:  # connect/read/write errors and timeouts
            raise TransientError(
                f"{what}: {type(exc).__name__}: {exc}",
                maybe_processed=not isinstance(exc, _NOT_SENT),
            ) from exc
        except httpx.RequestError as exc:  # undecodable content-encoding and the like
            raise InvalidResponse(f"{what}: {type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _decode(response: httpx.Response, decoder: msgspec.json.Decoder[_T], what: str) -> _T:
        try:
            return decoder.decode(response.content)
        except (msgspec.MsgspecError, RecursionError) as exc:
            status = response.status_code
            raise InvalidResponse(
                f"{what}: {status} response is not the expected document: {exc}",
                status=status,
            ) from exc

    @staticmethod
    def _raise_for_status(
        response: httpx.Response, what: str, credential: _Credential, content: bytes | None = None
    ) -> None:
        """The only place non-2xx responses become :mod:`agent.errors`."""
        status = response.status_code
        if 200 <= status < 300:
            return
        problem = _read_problem(response, credential.secret, content)
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


def _open_for_writing(path: Path) -> BinaryIO:
    """Create or truncate ``path`` with mode ``0600`` (no symlink followed) for writing."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0), _DOWNLOAD_FILE_MODE)
    return os.fdopen(fd, "wb")


def _discard(path: Path) -> None:
    """Delete ``path`` if it exists."""
    with contextlib.suppress(OSError):
        path.unlink()
