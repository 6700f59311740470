"""The activator: verify, download, unpack, validate, health-check, switch, activate, commit."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from typing import TYPE_CHECKING, Final

from agent.activation._archive import SPEC_NAME, file_sha256, unpack_archive, validate_bundle
from agent.activation._commands import run_command
from agent.activation._fs import clear_file, read_record, remove_tree, write_record
from agent.activation._layout import Layout
from agent.activation._model import (
    ACTIVATION_FAILED,
    INTERRUPTED,
    ActivationOutcome,
    ActivationRefused,
    Journal,
    Step,
    step_index,
)
from agent.activation._verify import digest_hex, verify_manifest
from agent.errors import BundleTooLarge, Forbidden, PermanentError, Unauthorized
from agent.state import save_state

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from agent.config import AgentConfig
    from agent.state import AgentState
    from shared.deployments import ManifestPayload
    from shared.signing import Envelope

__all__ = ["CRASH_EXIT_CODE", "Activator"]

#: Exit status of the fault-injection hook (``BYTEOR_CRASH_AFTER_STEP``).
CRASH_EXIT_CODE: Final = 86
_DIR_MODE: Final = 0o700

logger = logging.getLogger("byteor.agent.activation")


class Activator:
    """Applies deployment manifests to this host, refusing bad ones before anything switches.

    See :mod:`agent.activation` for the steps and :class:`~agent.activation._layout.Layout` for
    the files involved.
    """

    def __init__(self, settings: AgentConfig) -> None:
        """Create an activator (no I/O).

        Args:
            settings: State directory, spec path, commands, timeouts and size bounds.
        """
        self._settings = settings
        self.layout = Layout(settings)

    # --- public API ------------------------------------------------------------------------------

    def verify(self, envelope: Envelope, state: AgentState) -> ManifestPayload:
        """Verify a manifest against the pinned key set and this agent's state (step a).

        Never changes anything.

        Args:
            envelope: The signed manifest.
            state: The agent's state (pinned key set, identity, ``last_sequence``).

        Returns:
            The verified payload.

        Raises:
            ActivationRefused: With a :class:`~shared.signing.VerificationError` reason, or
                ``malformed``, ``wrong_agent``, ``wrong_organization`` or ``replayed``.
        """
        return verify_manifest(envelope, state)

    async def apply(
        self,
        envelope: Envelope,
        state: AgentState,
        download: Callable[[str, Path, int], Awaitable[int]],
    ) -> ActivationOutcome:
        """Apply one deployment manifest; ``state`` is updated in place and saved.

        Args:
            envelope: The signed manifest.
            state: The agent's state.
            download: Fetches a bundle archive: ``(digest, destination, max_bytes) -> bytes``
                (:meth:`agent.client.ControlPlaneClient.download_bundle`).

        Returns:
            ``active`` (or ``rolled_back`` for an operator rollback manifest) when the new bundle
            is live; ``failed`` with reason ``activation_failed: ...`` when the activation command
            failed and the previous bundle was restored.

        Raises:
            ActivationRefused: The manifest or its bundle was refused; nothing was switched.
                Past verification, ``last_sequence`` was advanced (``state_changed``) and the
                ``failed`` outcome recorded (``outcome``).
            AgentError: A transient (or authentication) failure of the download; nothing was
                switched or recorded, so the same manifest can be retried.
            OSError: A local file system failure; nothing stays switched.
        """
        payload = verify_manifest(envelope, state)
        journal = Journal(
            deployment_id=payload.deployment_id,
            sequence=payload.sequence,
            action=payload.action,
            target_digest=payload.bundle_digest,
            target_spec_hash=payload.spec_hash,
            previous_deployment_id=state.active_deployment_id,
            previous_digest=state.active_bundle_digest,
            previous_spec_hash=state.active_spec_hash,
        )
        logger.info(
            "applying deployment %s (sequence %d, %s of bundle %s)",
            payload.deployment_id,
            payload.sequence,
            payload.action,
            payload.bundle_digest,
        )
        self.layout.state_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        self._record(journal, "verified")
        try:
            directory = await self._prepare(payload, journal, download)
        except ActivationRefused as exc:
            exc.deployment_id, exc.sequence = payload.deployment_id, payload.sequence
            logger.warning("refused deployment %s: %s", payload.deployment_id, exc)
            exc.outcome = self._fail(state, journal, str(exc))
            exc.state_changed = True
            raise
        except BaseException:
            self._abandon()
            raise
        try:
            self.layout.switch(directory)
        except BaseException:
            self._restore(journal)
            self._abandon()
            raise
        self._record(journal, "switched")
        failure = await self._activate(directory)
        if failure is not None:
            logger.error(
                "activation of deployment %s failed (%s); rolling back",
                journal.deployment_id,
                failure,
            )
            await self._roll_back(journal)
            return self._fail(state, journal, f"{ACTIVATION_FAILED}: {failure}")
        self._record(journal, "activated")
        return self._commit(state, journal)

    async def recover(self, state: AgentState) -> ActivationOutcome | None:
        """Finish or undo an activation a crash interrupted (call once at start).

        Afterwards exactly the previous or the new bundle is active, ``current`` and the spec
        file agree, and the journal is gone.

        Args:
            state: The agent's state (updated in place and saved when the outcome changes it).

        Returns:
            ``None`` without a journal; ``active``/``rolled_back`` if the crash came after the
            activation command succeeded; otherwise ``failed`` (``interrupted: ...``) after the
            previous bundle was kept or restored.
        """
        layout = self.layout
        journal = read_record(layout.journal_path, Journal)
        if journal is None:
            if layout.journal_path.exists():  # corrupt: trust what the state says is active
                layout.restore(
                    state.active_bundle_digest, spec_backup=layout.spec_backup_path.exists()
                )
                clear_file(layout.journal_path)
            layout.cleanup_temporary()
            return None
        logger.warning(
            "recovering deployment %s (sequence %d) interrupted after step %s",
            journal.deployment_id,
            journal.sequence,
            journal.step,
        )
        layout.cleanup_temporary()
        if journal.step == "activated":
            return self._commit(state, journal)
        if journal.step == "switched":
            await self._roll_back(journal)
        elif step_index(journal.step) >= step_index("health_checked"):
            self._restore(journal)  # the switch may have begun
        decided = self.unreported_outcome()
        if decided is not None and decided.sequence == journal.sequence:
            clear_file(layout.journal_path)  # the crash came after the outcome was recorded
            return decided
        reason = (
            f"{INTERRUPTED}: the agent stopped after step {journal.step!r}; "
            "the previous bundle is active"
        )
        return self._fail(state, journal, reason)

    def unreported_outcome(self) -> ActivationOutcome | None:
        """The last outcome recorded and not yet marked reported, if any."""
        return read_record(self.layout.outcome_path, ActivationOutcome)

    def mark_reported(self, outcome: ActivationOutcome) -> None:
        """Forget the recorded outcome once the control plane has it (if it is still this one)."""
        if self.unreported_outcome() == outcome:
            clear_file(self.layout.outcome_path)

    # --- steps -----------------------------------------------------------------------------------

    def _record(self, journal: Journal, step: Step) -> None:
        journal.step = step
        write_record(self.layout.journal_path, journal)
        logger.debug("deployment %s: %s", journal.deployment_id, step)
        if self._settings.crash_after_step == step:
            logger.critical("fault injection: exiting after step %s", step)
            os._exit(CRASH_EXIT_CODE)

    async def _prepare(
        self,
        payload: ManifestPayload,
        journal: Journal,
        download: Callable[[str, Path, int], Awaitable[int]],
    ) -> Path:
        """Steps b to e: nothing under ``current`` changes here."""
        limit = self._settings.max_bundle_bytes
        if payload.bundle_size > limit:
            raise ActivationRefused(
                "bundle_too_large", f"the bundle has {payload.bundle_size} bytes (limit {limit})"
            )
        directory = self.layout.bundle_dir(payload.bundle_digest)
        if await asyncio.to_thread(self.layout.reusable, directory):
            logger.info("bundle %s is already unpacked; reusing it", payload.bundle_digest)
            self._record(journal, "downloaded")
        else:
            archive = await self._download(payload, download)
            self._record(journal, "downloaded")
            await asyncio.to_thread(unpack_archive, archive, directory, limit)
            remove_tree(archive)
        self._record(journal, "unpacked")
        await asyncio.to_thread(validate_bundle, directory, payload, limit)
        self._record(journal, "validated")
        await self._health_check(directory)
        if journal.previous_digest is None:
            # Nothing of ours is active: keep the spec file found there to restore on failure.
            journal.spec_backup = self.layout.backup_unmanaged_spec()
        self._record(journal, "health_checked")
        return directory

    async def _download(
        self, payload: ManifestPayload, download: Callable[[str, Path, int], Awaitable[int]]
    ) -> Path:
        downloads = self.layout.downloads_dir
        downloads.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        expected = digest_hex(payload.bundle_digest)
        destination = downloads / f"{expected}.{secrets.token_hex(4)}.part"
        size = payload.bundle_size
        try:
            await download(payload.bundle_digest, destination, size)
        except BundleTooLarge as exc:
            raise ActivationRefused(
                "size_mismatch", f"the download exceeded the signed size of {size} bytes"
            ) from exc
        except (Unauthorized, Forbidden):
            raise  # our credentials, not the manifest: retry later
        except PermanentError as exc:
            raise ActivationRefused("download_failed", str(exc)) from exc
        try:
            actual = destination.stat().st_size
        except OSError as exc:
            raise ActivationRefused("download_failed", "the download left no file") from exc
        if actual != size:
            raise ActivationRefused(
                "size_mismatch", f"the download has {actual} bytes, the manifest says {size}"
            )
        digest = await asyncio.to_thread(file_sha256, destination)
        if digest != expected:
            raise ActivationRefused(
                "digest_mismatch",
                f"the download hashes to sha256:{digest}, the manifest says {payload.bundle_digest}",
            )
        return destination

    def _command_env(self, directory: Path) -> dict[str, str]:
        bundle = directory.absolute()
        return {"BYTEOR_BUNDLE_DIR": str(bundle), "BYTEOR_CANDIDATE_SPEC": str(bundle / SPEC_NAME)}

    async def _health_check(self, directory: Path) -> None:
        command = self._settings.health_check_command
        if not command:
            return
        failure = await run_command(
            "health check",
            command,
            extra_env=self._command_env(directory),
            seconds=self._settings.health_check_timeout_seconds,
        )
        if failure is not None:
            raise ActivationRefused("health_check_failed", failure)

    async def _activate(self, directory: Path) -> str | None:
        command = self._settings.activation_command
        if not command:
            return None
        env = self._command_env(directory) | {"BYTEOR_SPEC": str(self._settings.spec.absolute())}
        return await run_command(
            "activation", command, extra_env=env, seconds=self._settings.activation_timeout_seconds
        )

    def _restore(self, journal: Journal) -> Path | None:
        return self.layout.restore(journal.previous_digest, spec_backup=journal.spec_backup)

    async def _roll_back(self, journal: Journal) -> None:
        """Restore the previous bundle and, best effort, re-run the activation command for it."""
        previous = self._restore(journal)
        if previous is None:
            return
        failure = await self._activate(previous)
        if failure is not None:
            logger.error("re-activating the previous bundle also failed: %s", failure)

    def _fail(self, state: AgentState, journal: Journal, reason: str) -> ActivationOutcome:
        """Record a failed outcome; past verification the sequence is consumed."""
        outcome = ActivationOutcome(
            deployment_id=journal.deployment_id,
            sequence=journal.sequence,
            status="failed",
            reason=reason,
            bundle_digest=journal.target_digest,
            spec_hash=journal.target_spec_hash,
        )
        state.last_sequence = max(state.last_sequence, journal.sequence)
        write_record(self.layout.outcome_path, outcome)
        save_state(self.layout.state_dir, state)
        self._abandon()
        self.layout.prune(state)
        return outcome

    def _commit(self, state: AgentState, journal: Journal) -> ActivationOutcome:
        """Step h: the new bundle is live; remember it (idempotent, also used by recovery)."""
        outcome = ActivationOutcome(
            deployment_id=journal.deployment_id,
            sequence=journal.sequence,
            status="rolled_back" if journal.action == "rollback" else "active",
            bundle_digest=journal.target_digest,
            spec_hash=journal.target_spec_hash,
        )
        if journal.previous_digest != journal.target_digest:
            state.previous_bundle_digest = journal.previous_digest
        state.last_sequence = max(state.last_sequence, journal.sequence)
        state.active_deployment_id = journal.deployment_id
        state.active_bundle_digest = journal.target_digest
        state.active_spec_hash = journal.target_spec_hash
        write_record(self.layout.outcome_path, outcome)
        save_state(self.layout.state_dir, state)
        clear_file(self.layout.journal_path)
        clear_file(self.layout.spec_backup_path)
        self.layout.cleanup_temporary()
        self.layout.prune(state)
        logger.info(
            "deployment %s is %s (bundle %s)",
            journal.deployment_id,
            outcome.status,
            journal.target_digest,
        )
        return outcome

    def _abandon(self) -> None:
        """Drop the journal and temporary files (nothing is switched at this point)."""
        clear_file(self.layout.journal_path)
        self.layout.cleanup_temporary()
