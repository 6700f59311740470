"""Step a: is this manifest signed by a pinned key, current, and a new one for this agent?"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Final

import msgspec

from agent.activation._model import ActivationRefused
from shared.deployments import MANIFEST_KIND, ManifestPayload
from shared.signing import VerificationError, decode_keyset, verify_envelope

if TYPE_CHECKING:
    from agent.state import AgentState
    from shared.signing import Envelope, KeySet

__all__ = ["check_manifest", "digest_hex", "verify_manifest"]

_DIGEST: Final = re.compile(r"sha256:([0-9a-f]{64})")


def digest_hex(digest: str) -> str:
    """The hex part of a ``sha256:<hex>`` digest.

    Raises:
        ValueError: If ``digest`` is not of that form.
    """
    match = _DIGEST.fullmatch(digest)
    if match is None:
        raise ValueError(f"not a sha256 digest: {digest[:80]!r}")
    return match.group(1)


def _claimed(envelope: Envelope) -> tuple[str | None, int | None]:
    """The deployment id and sequence an envelope claims (for reporting a refusal only)."""
    payload: object = getattr(envelope, "payload", None)
    if not isinstance(payload, dict):
        return None, None
    deployment_id, sequence = payload.get("deployment_id"), payload.get("sequence")
    return (
        deployment_id if isinstance(deployment_id, str) and deployment_id else None,
        sequence if isinstance(sequence, int) and not isinstance(sequence, bool) else None,
    )


def verify_manifest(envelope: Envelope, state: AgentState) -> ManifestPayload:
    """Verify a manifest against the pinned key set and this agent's state; changes nothing.

    Args:
        envelope: The signed manifest.
        state: The agent's state (pinned key set, identity, ``last_sequence``).

    Returns:
        The verified payload.

    Raises:
        ActivationRefused: With a :class:`~shared.signing.VerificationError` reason, or
            ``malformed``, ``wrong_agent``, ``wrong_organization`` or ``replayed``.
    """
    try:
        keyset = decode_keyset(state.keyset)
    except VerificationError as exc:
        deployment_id, sequence = _claimed(envelope)
        raise ActivationRefused(
            exc.reason, str(exc), deployment_id=deployment_id, sequence=sequence
        ) from exc
    return check_manifest(
        envelope,
        keyset,
        agent_id=state.agent_id,
        org_id=state.org_id,
        environment_id=state.environment_id,
        last_sequence=state.last_sequence,
    )


def check_manifest(
    envelope: Envelope,
    keyset: KeySet,
    *,
    agent_id: str,
    org_id: str,
    environment_id: str,
    last_sequence: int,
) -> ManifestPayload:
    """:func:`verify_manifest` on an already decoded key set and the agent's identity.

    The fleet benchmark's simulated agents verify with this, so they check what a real one does.
    """
    deployment_id, sequence = _claimed(envelope)

    def refuse(reason: str, message: str) -> ActivationRefused:
        return ActivationRefused(reason, message, deployment_id=deployment_id, sequence=sequence)

    try:
        raw = verify_envelope(
            envelope, keyset, now=int(time.time()), expected_environment_id=environment_id
        )
    except VerificationError as exc:
        raise refuse(exc.reason, str(exc)) from exc
    try:
        payload = msgspec.convert(raw, ManifestPayload)
    except msgspec.ValidationError as exc:
        raise refuse("malformed", f"not a deployment manifest: {exc}") from exc
    if payload.kind != MANIFEST_KIND:
        raise refuse("malformed", f"payload kind is {payload.kind!r}, not {MANIFEST_KIND!r}")
    if _DIGEST.fullmatch(payload.bundle_digest) is None or payload.bundle_size <= 0:
        raise refuse("malformed", "bundle_digest or bundle_size is not valid")
    if payload.agent_id != agent_id:
        raise refuse("wrong_agent", f"the manifest is for agent {payload.agent_id!r}")
    if payload.org_id != org_id:
        raise refuse("wrong_organization", f"the manifest is for org {payload.org_id!r}")
    if payload.sequence <= last_sequence:
        raise refuse("replayed", f"sequence {payload.sequence} is not newer than {last_sequence}")
    return payload
