"""First boot: turn an enrollment token into a persisted agent identity, exactly once.

Order of precedence:

1. ``BYTEOR_AGENT_ID`` and ``BYTEOR_AGENT_API_KEY`` set: no enrollment. The state file is created
   from the agent's own record and the key set served now (trust on first use), unless it already
   holds this agent, in which case the stored key wins (it may have rotated since provisioning).
   The agent's identity key is registered by the uploader before its first upload.
2. A state file exists: the agent is enrolled; the enrollment token is ignored.
3. Otherwise enroll with ``BYTEOR_ENROLLMENT_TOKEN`` into ``BYTEOR_ORG_ID`` /
   ``BYTEOR_PROJECT_ID`` / ``BYTEOR_ENVIRONMENT_ID`` and persist the result atomically (0600)
   before anything else happens, so the token is never needed again. The agent's signing key
   (:mod:`agent.identity`) is created first and its public half sent as ``public_key``.
"""

from __future__ import annotations

import logging
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from agent.errors import PermanentError
from agent.identity import load_or_create_identity, public_key_b64
from agent.state import AgentState, load_state, save_state
from shared import __version__
from shared.agents import EnrollRequest
from shared.signing import decode_keyset

if TYPE_CHECKING:
    from agent.client import ControlPlaneClient
    from agent.config import AgentConfig

__all__ = ["EnrollmentError", "ensure_enrolled"]

logger = logging.getLogger("byteor.agent.enrollment")


class EnrollmentError(PermanentError):
    """Enrollment cannot happen with the settings given (a clear message says what is missing)."""


async def _from_provisioned(
    settings: AgentConfig, client: ControlPlaneClient, existing: AgentState | None
) -> AgentState:
    agent_id = settings.agent_id or ""
    api_key = settings.agent_api_key.get_secret_value() if settings.agent_api_key else ""
    if existing is not None and existing.agent_id == agent_id:
        return existing
    client.set_credentials(agent_id, api_key)
    record = await client.get_self()
    keyset = await client.signing_keys()
    state = AgentState(
        agent_id=record.id,
        api_key=api_key,
        org_id=record.org_id,
        project_id=record.project_id,
        environment_id=record.environment_id,
        name=record.name,
        keyset=keyset,
        keyset_version=decode_keyset(keyset).version,
        enrolled_at=datetime.now(UTC),
    )
    save_state(settings.state_dir, state)
    logger.info("using provisioned credentials of agent %s (%s)", record.id, record.name)
    return state


async def ensure_enrolled(
    settings: AgentConfig, client: ControlPlaneClient
) -> tuple[AgentState, bool]:
    """The agent's persisted identity, enrolling first if there is none.

    Returns:
        The state and whether this call enrolled the agent.

    Raises:
        EnrollmentError: If enrollment is needed but settings are missing.
        AgentError: If the control plane refuses (e.g. 401 for a used-up token) or is unreachable.
    """
    existing = load_state(settings.state_dir)
    if settings.agent_id and settings.agent_api_key:
        return await _from_provisioned(settings, client, existing), False
    if existing is not None:
        return existing, False
    missing = [
        name
        for name, value in (
            ("BYTEOR_ENROLLMENT_TOKEN", settings.enrollment_token),
            ("BYTEOR_ORG_ID", settings.org_id),
            ("BYTEOR_PROJECT_ID", settings.project_id),
            ("BYTEOR_ENVIRONMENT_ID", settings.environment_id),
        )
        if not value
    ]
    if missing:
        raise EnrollmentError(
            f"not enrolled and cannot enroll: set {', '.join(missing)} "
            "(or BYTEOR_AGENT_ID and BYTEOR_AGENT_API_KEY)"
        )
    token, org_id = settings.enrollment_token, settings.org_id
    project_id, environment_id = settings.project_id, settings.environment_id
    if token is None or org_id is None or project_id is None or environment_id is None:
        raise EnrollmentError("enrollment settings vanished")  # pragma: no cover - checked above
    # The signing key exists before enrolling: the control plane stores its public half and
    # verifies every artifact upload against it.
    identity = load_or_create_identity(settings.state_dir)
    response = await client.enroll(
        token.get_secret_value(),
        org_id,
        project_id,
        environment_id,
        EnrollRequest(
            name=settings.agent_name,
            hostname=socket.gethostname(),
            public_key=public_key_b64(identity),
            agent_version=__version__,
        ),
    )
    keyset = decode_keyset(response.signing_keys)
    state = AgentState(
        agent_id=response.agent_id,
        api_key=response.api_key,
        org_id=response.org_id,
        project_id=response.project_id,
        environment_id=response.environment_id,
        name=response.name,
        keyset=response.signing_keys,
        keyset_version=keyset.version,
        enrolled_at=datetime.now(UTC),
        identity_registered=True,  # its public half went with the enrollment request
    )
    save_state(settings.state_dir, state)
    logger.info(
        "enrolled as agent %s (%s) in environment %s; the enrollment token is no longer needed",
        state.agent_id,
        state.name,
        state.environment_id,
    )
    return state, True
