"""The vocabulary of activation: steps, refusal reasons, outcomes and the journal record."""

from __future__ import annotations

from typing import Final, Literal

import msgspec

from shared.deployments import DeploymentReport, ReportStatus

__all__ = [
    "ACTIVATION_FAILED",
    "INTERRUPTED",
    "MAX_REASON_CHARS",
    "REFUSAL_REASONS",
    "STATE_KEEPING_REASONS",
    "STEPS",
    "ActivationOutcome",
    "ActivationRefused",
    "Journal",
    "Step",
    "step_index",
]

#: The steps of an activation, in order; the journal records the last one completed.
Step = Literal[
    "verified", "downloaded", "unpacked", "validated", "health_checked", "switched", "activated"
]
STEPS: Final[tuple[Step, ...]] = (
    "verified",
    "downloaded",
    "unpacked",
    "validated",
    "health_checked",
    "switched",
    "activated",
)

#: Refusals that leave the agent state untouched: the manifest is not (provably) a new one for
#: this agent, so it must not consume a sequence number. ``verification_failed`` and the other
#: codes of :mod:`shared.signing` come from :class:`~shared.signing.VerificationError`.
STATE_KEEPING_REASONS: Final = frozenset(
    {
        "verification_failed",
        "malformed",
        "unknown_kid",
        "key_retired",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "wrong_environment",
        "wrong_organization",
        "wrong_agent",
        "replayed",
    }
)
#: Every reason :class:`ActivationRefused` may carry. The ones outside
#: :data:`STATE_KEEPING_REASONS` concern a verified manifest and advance ``last_sequence``.
REFUSAL_REASONS: Final = STATE_KEEPING_REASONS | frozenset(
    {
        "bundle_too_large",
        "download_failed",
        "size_mismatch",
        "digest_mismatch",
        "corrupt_archive",
        "unsafe_archive",
        "invalid_bundle",
        "spec_invalid",
        "spec_hash_mismatch",
        "health_check_failed",
    }
)
#: The activation command failed or timed out; the previous bundle was restored.
ACTIVATION_FAILED: Final = "activation_failed"
#: The agent stopped mid-activation; on restart the previous bundle was kept or restored.
INTERRUPTED: Final = "interrupted"
#: Longest ``reason`` sent to the control plane.
MAX_REASON_CHARS: Final = 500


def step_index(step: Step) -> int:
    """The position of ``step`` in :data:`STEPS`."""
    return STEPS.index(step)


class ActivationRefused(Exception):
    """The agent refused a manifest before anything under ``current`` changed.

    Attributes:
        reason: A stable code (one of :data:`REFUSAL_REASONS`).
        message: What exactly was wrong, for humans (no secrets).
        deployment_id: The manifest's deployment id, if known (unverified for
            :data:`STATE_KEEPING_REASONS`).
        sequence: The manifest's sequence, if known (same caveat).
        state_changed: Whether ``last_sequence`` was advanced past this manifest.
        outcome: The ``failed`` outcome recorded for it when ``state_changed``.
    """

    def __init__(
        self,
        reason: str,
        message: str,
        *,
        deployment_id: str | None = None,
        sequence: int | None = None,
        state_changed: bool = False,
    ) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message
        self.deployment_id = deployment_id
        self.sequence = sequence
        self.state_changed = state_changed
        self.outcome: ActivationOutcome | None = None

    @property
    def reportable(self) -> bool:
        """Whether to report this refusal to the control plane.

        A replay is about a sequence the agent already acted on (reporting it ``failed`` would
        contradict the real outcome), and a manifest for another agent is not ours to report.
        """
        return (
            self.reason not in {"replayed", "wrong_agent"}
            and self.deployment_id is not None
            and self.sequence is not None
        )

    def report(self) -> DeploymentReport:
        """The ``failed`` report of this refusal (requires :attr:`reportable`)."""
        if self.deployment_id is None or self.sequence is None:
            raise ValueError("this refusal has no deployment id or sequence to report")
        return DeploymentReport(
            deployment_id=self.deployment_id,
            sequence=self.sequence,
            status="failed",
            reason=str(self)[:MAX_REASON_CHARS],
        )


class ActivationOutcome(msgspec.Struct, kw_only=True):
    """How one manifest ended on this agent; ``bundle_digest``/``spec_hash`` are the manifest's.

    ``reason`` is ``"<code>: <detail>"`` for ``failed`` outcomes, ``None`` otherwise.
    """

    deployment_id: str
    sequence: int
    status: ReportStatus
    reason: str | None = None
    bundle_digest: str | None = None
    spec_hash: str | None = None

    @property
    def reason_code(self) -> str | None:
        """The stable code at the start of :attr:`reason`."""
        return None if self.reason is None else self.reason.partition(":")[0]

    def to_report(self) -> DeploymentReport:
        """The report of this outcome for the control plane."""
        return DeploymentReport(
            deployment_id=self.deployment_id,
            sequence=self.sequence,
            status=self.status,
            reason=None if self.reason is None else self.reason[:MAX_REASON_CHARS],
            bundle_digest=self.bundle_digest,
            spec_hash=self.spec_hash,
        )


class Journal(msgspec.Struct, kw_only=True):
    """``activation.json``: what an activation in progress is doing and how to undo it.

    Attributes:
        deployment_id: The manifest's deployment.
        sequence: The manifest's sequence.
        action: ``deploy`` or ``rollback`` (an operator rollback manifest).
        target_digest: The bundle being activated.
        target_spec_hash: Its spec hash.
        previous_deployment_id: The deployment active before, if any.
        previous_digest: The bundle active before, if any (restored on failure).
        previous_spec_hash: Its spec hash.
        spec_backup: With no previous bundle, whether a pre-existing (unmanaged) spec file was
            saved to be restored on failure.
        step: The last step completed.
    """

    deployment_id: str
    sequence: int
    action: str
    target_digest: str
    target_spec_hash: str
    previous_deployment_id: str | None = None
    previous_digest: str | None = None
    previous_spec_hash: str | None = None
    spec_backup: bool = False
    step: Step = "verified"
