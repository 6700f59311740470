"""The deployment job: long-poll for manifests, apply them, report how each one ended.

:meth:`DeploymentChecker.check_once` is one round: deliver any outcome not yet reported, then
long-poll ``GET /api/v1/agents/{id}/deployment`` (with the last ``ETag``). A manifest newer than
``last_sequence`` is verified, reported ``activating``, applied by the
:class:`~agent.activation.Activator`, and its outcome reported (``active``, ``rolled_back`` or
``failed`` with ``"<reason code>: <detail>"``).

Failures never raise out of a round: transient ones are logged and :attr:`next_delay` backs off
(jittered, exponential, capped at ``max_backoff_seconds``) so an unreachable control plane is not
hammered. An outcome whose report fails transiently stays pending and is retried first thing next
round; the activator also keeps it on disk (``deployment_outcome.json``) until it is delivered, so
it survives a restart.
"""

from __future__ import annotations

import hashlib
import logging
import random
from typing import TYPE_CHECKING, Final

import msgspec

from agent.activation import ActivationOutcome, ActivationRefused
from agent.errors import AgentError, Forbidden, TransientError, Unauthorized
from shared.deployments import DeploymentReport

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.activation import Activator
    from agent.client import ControlPlaneClient
    from agent.config import AgentConfig
    from agent.state import AgentState
    from shared.deployments import AgentDeployment
    from shared.signing import Envelope

__all__ = ["POLL_DELAY_SECONDS", "DeploymentChecker"]

#: Pause between two long-polls when all is well.
POLL_DELAY_SECONDS: Final = 1.0
_POLL_JITTER_SECONDS: Final = 0.25

logger = logging.getLogger("byteor.agent.deployments")


def _claimed_sequence(deployment: AgentDeployment, envelope: Envelope) -> int:
    """The sequence a manifest claims (unverified; only to skip what is certainly not new)."""
    claimed: object = (
        envelope.payload.get("sequence") if isinstance(envelope.payload, dict) else None
    )
    if isinstance(claimed, int) and not isinstance(claimed, bool):
        return claimed
    return deployment.sequence


def _fingerprint(envelope: Envelope) -> bytes:
    return hashlib.sha256(msgspec.json.encode(envelope)).digest()


class DeploymentChecker:
    """Fetches, applies and reports deployment manifests, one round per :meth:`check_once`.

    Attributes:
        next_delay: Seconds to wait before the next round (grows while rounds fail).
        busy: Whether a round is in progress.
    """

    def __init__(
        self,
        settings: AgentConfig,
        client: ControlPlaneClient,
        activator: Activator,
        state: Callable[[], AgentState | None],
    ) -> None:
        """Create the checker and pick up an outcome left unreported by a previous run.

        Args:
            settings: Long-poll wait and backoff bound.
            client: The control plane client (credentials set).
            activator: Applies manifests.
            state: Returns the agent's current state (``None`` before enrollment).
        """
        self._settings = settings
        self._client = client
        self._activator = activator
        self._state = state
        self._etag: str | None = None
        self._pending: tuple[DeploymentReport, ActivationOutcome | None] | None = None
        self._refused: bytes | None = None
        self._failures = 0
        self.busy = False
        self.next_delay = POLL_DELAY_SECONDS
        unreported = activator.unreported_outcome()
        if unreported is not None:
            self.queue(unreported)

    @property
    def pending_report(self) -> DeploymentReport | None:
        """The report waiting to be delivered, if any."""
        return None if self._pending is None else self._pending[0]

    def queue(self, outcome: ActivationOutcome) -> None:
        """Report ``outcome`` with the next round (it replaces an older pending report).

        Args:
            outcome: An outcome of :meth:`~agent.activation.Activator.apply` or ``recover``.
        """
        self._queue(outcome.to_report(), outcome)

    def _queue(self, report: DeploymentReport, outcome: ActivationOutcome | None) -> None:
        if self._pending is not None and self._pending[0].sequence > report.sequence:
            return
        self._pending = (report, outcome)

    async def flush(self) -> bool:
        """Deliver the pending report, if any.

        Returns:
            ``False`` if it is still pending (a transient or credential failure), else ``True``.
        """
        if self._pending is None:
            return True
        report, outcome = self._pending
        try:
            await self._client.report_deployment(report)
        except (TransientError, Unauthorized, Forbidden) as exc:
            logger.warning(
                "could not report deployment %s (%s); will retry: %s",
                report.deployment_id,
                report.status,
                exc,
            )
            return False
        except AgentError as exc:
            logger.error(  # noqa: TRY400 - the message says it all
                "the control plane refused the report of deployment %s (%s); dropping it: %s",
                report.deployment_id,
                report.status,
                exc,
            )
        else:
            logger.info(
                "reported deployment %s sequence %d: %s",
                report.deployment_id,
                report.sequence,
                report.status,
            )
        if self._pending == (report, outcome):
            self._pending = None
        if outcome is not None:
            try:
                self._activator.mark_reported(outcome)
            except OSError as exc:
                logger.warning("could not clear the reported outcome: %s", exc)
        return True

    async def check_once(self) -> None:
        """One round: report what is pending, long-poll, apply a new manifest. Never raises."""
        if self.busy:
            return
        self.busy = True
        try:
            if await self._round():
                self._failures = 0
                self.next_delay = POLL_DELAY_SECONDS + random.uniform(0, _POLL_JITTER_SECONDS)  # noqa: S311
            else:
                self._failures += 1
                cap = min(self._settings.max_backoff_seconds, 2.0**self._failures)
                self.next_delay = max(POLL_DELAY_SECONDS, cap * random.uniform(0.5, 1.0))  # noqa: S311
        finally:
            self.busy = False

    async def _round(self) -> bool:
        """Return ``False`` when the control plane or the host failed (back off)."""
        state = self._state()
        if state is None:
            return True
        if not await self.flush():
            return False
        try:
            deployment, etag = await self._client.get_deployment(
                wait=self._settings.deployment_wait_seconds, etag=self._etag
            )
        except AgentError as exc:
            logger.warning("deployment check failed: %s", exc)
            return False
        self._etag = etag
        if deployment is None or deployment.manifest is None:
            return True
        envelope = deployment.manifest
        if _claimed_sequence(deployment, envelope) <= state.last_sequence:
            return True
        fingerprint = _fingerprint(envelope)
        if fingerprint == self._refused:
            return True  # refused already and nothing changed since
        return await self._apply(envelope, state, fingerprint)

    async def _apply(self, envelope: Envelope, state: AgentState, fingerprint: bytes) -> bool:
        try:
            payload = self._activator.verify(envelope, state)
            await self._report_activating(payload.deployment_id, payload.sequence)
            outcome = await self._activator.apply(envelope, state, self._client.download_bundle)
        except ActivationRefused as exc:
            logger.warning("deployment refused: %s", exc)
            if exc.outcome is not None:
                self.queue(exc.outcome)
            else:
                self._refused = fingerprint
                if exc.reportable:
                    self._queue(exc.report(), None)
            await self.flush()
            return True
        except AgentError as exc:
            logger.warning("deployment interrupted, will retry: %s", exc)
            self._etag = None  # fetch the manifest again rather than wait on it (304)
            return False
        except OSError as exc:
            logger.error("deployment failed on this host, will retry: %s", exc)  # noqa: TRY400
            self._etag = None
            return False
        self.queue(outcome)
        await self.flush()
        return True

    async def _report_activating(self, deployment_id: str, sequence: int) -> None:
        report = DeploymentReport(
            deployment_id=deployment_id, sequence=sequence, status="activating"
        )
        try:
            await self._client.report_deployment(report)
        except AgentError as exc:
            # Progress only: the final outcome is what must arrive, and it is kept until it does.
            logger.warning("could not report deployment %s activating: %s", deployment_id, exc)
