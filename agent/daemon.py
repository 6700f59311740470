"""The agent daemon: enroll if needed, then run its scheduled jobs until stopped.

Jobs (APScheduler, ``max_instances=1``, ``coalesce=True``, jittered):

- heartbeat: psutil metrics to the control plane; the response sets the next interval, may hand
  over a rotated key, and announces key-set changes;
- signing-key refresh: accept a new key set only when a key of the pinned set signed it;
- deployment: long-poll for deployment manifests, apply and report them
  (:class:`~agent.deployments.DeploymentChecker`); it reschedules itself about a second after each
  long-poll returns (later while the control plane fails), and a heartbeat announcing
  ``deployment_pending`` runs it at once;
- uploads: move finished files from ``<state_dir>/outbox/`` into the spool and upload spooled
  artifacts (:class:`~agent.uploads.Uploader`), every ``upload_interval_seconds``;
- watchdog: ping systemd at half its ``WatchdogSec``.

The spool's size and the artifacts dropped to keep it bounded are written to ``status.json``
(and sent with heartbeats once :class:`~shared.agents.Heartbeat` has the fields).

Readiness (``READY=1``) is sent after the first successful heartbeat, or after the first failed
one when the control plane is unreachable, so a host boots even while the control plane is down.
A 401 is not fatal: the agent logs it, reports ``degraded`` and re-checks slowly.

At start, an activation interrupted by a crash is finished or undone
(:meth:`~agent.activation.Activator.recover`) before any job runs, and its outcome is reported as
soon as the control plane answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from agent.activation import Activator
from agent.deployments import DeploymentChecker
from agent.enrollment import ensure_enrolled
from agent.errors import AgentError, Forbidden, Unauthorized
from agent.identity import load_or_create_identity
from agent.metrics import prime_cpu_sampling, sample_resources
from agent.state import AgentState, save_state
from agent.status import RuntimeStatus, write_status
from agent.systemd import SystemdNotifier
from agent.uploads import Uploader, open_spool
from shared import __version__
from shared.agents import Heartbeat, HeartbeatResponse, SpoolStats
from shared.signing import VerificationError, decode_keyset, verify_keyset_update

if TYPE_CHECKING:
    from agent.client import ControlPlaneClient
    from agent.config import AgentConfig

__all__ = ["Agent"]

logger = logging.getLogger("byteor.agent")

KEYSET_REFRESH_SECONDS = 600.0
UNAUTHORIZED_RECHECK_SECONDS = 300.0
JITTER_FRACTION = 0.1
#: Safety-net period of the deployment job; it normally reschedules itself after each round.
DEPLOYMENT_FALLBACK_SECONDS = 300.0


class Agent:
    """One agent process. :meth:`run` blocks until :meth:`shutdown` (repeat-safe)."""

    def __init__(
        self,
        settings: AgentConfig,
        client: ControlPlaneClient,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.notifier = notifier or SystemdNotifier()
        self.state: AgentState | None = None
        self.interval = settings.heartbeat_interval_seconds
        self._stopping = asyncio.Event()
        self._started = time.monotonic()
        self._sequence = 0
        self._scheduler: AsyncIOScheduler | None = None
        self.status = RuntimeStatus(pid=os.getpid(), started_at=datetime.now(UTC))
        self.activator = Activator(settings)
        self.deployments = DeploymentChecker(settings, client, self.activator, lambda: self.state)
        self.spool = open_spool(
            settings.state_dir, settings.spool_max_bytes, settings.spool_max_files
        )
        self.uploader: Uploader | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def _identity_registered(self) -> None:
        if self.state is not None and not self.state.identity_registered:
            self.state.identity_registered = True
            save_state(self.settings.state_dir, self.state)

    async def run(self) -> None:
        """Enroll (if needed), start the jobs, and wait until :meth:`shutdown`."""
        prime_cpu_sampling()
        state, enrolled = await ensure_enrolled(self.settings, self.client)
        self.state = state
        self.client.set_credentials(state.agent_id, state.pending_api_key or state.api_key)
        self.status.keyset_version = state.keyset_version
        recovered = await self.activator.recover(state)
        if recovered is not None:
            self.deployments.queue(recovered)  # reported once the control plane answers
        self._sync_deployment_status()
        identity = load_or_create_identity(self.settings.state_dir)
        self.uploader = Uploader(
            self.settings,
            self.client,
            self.spool,
            identity,
            lambda: self.state,
            on_identity_registered=self._identity_registered,
        )
        self.notifier.status(f"{'enrolled' if enrolled else 'starting'} as {state.agent_id}")
        scheduler = AsyncIOScheduler(timezone=UTC)
        self._scheduler = scheduler
        scheduler.add_job(
            self.send_heartbeat,
            "interval",
            id="heartbeat",
            seconds=self.interval,
            jitter=self.interval * JITTER_FRACTION,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )
        scheduler.add_job(
            self.refresh_keyset,
            "interval",
            id="keyset",
            seconds=KEYSET_REFRESH_SECONDS,
            jitter=KEYSET_REFRESH_SECONDS * JITTER_FRACTION,
            max_instances=1,
            coalesce=True,
        )
        scheduler.add_job(
            self.check_deployment,
            "interval",
            id="deployment",
            seconds=DEPLOYMENT_FALLBACK_SECONDS,
            jitter=DEPLOYMENT_FALLBACK_SECONDS * JITTER_FRACTION,
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )
        upload_interval = self.settings.upload_interval_seconds
        scheduler.add_job(
            self.upload_artifacts,
            "interval",
            id="uploads",
            seconds=upload_interval,
            jitter=upload_interval * JITTER_FRACTION,
            max_instances=1,
            coalesce=True,
        )
        if self.notifier.watchdog_interval:
            scheduler.add_job(
                self.notifier.watchdog,
                "interval",
                id="watchdog",
                seconds=self.notifier.watchdog_interval,
                max_instances=1,
                coalesce=True,
            )
        scheduler.start()
        logger.info("agent %s (%s) running", state.agent_id, state.name)
        try:
            await self._stopping.wait()
        finally:
            self.notifier.stopping()
            scheduler.shutdown(wait=False)
            self.status.state = "stopped"
            self._write_status()
            logger.info("agent %s stopped", state.agent_id)

    async def shutdown(self) -> None:
        """Stop after the job in progress (safe to call repeatedly)."""
        self._stopping.set()

    # --- jobs ------------------------------------------------------------------------------------

    def _next_sequence(self) -> int:
        # Milliseconds since the epoch, strictly increasing: stays newer than anything sent
        # before a restart, which the control plane uses to ignore stale heartbeats.
        self._sequence = max(self._sequence + 1, time.time_ns() // 1_000_000)
        return self._sequence

    def _spool_report(self) -> dict[str, Any]:
        """Spool size and unreported drops; also copied into the status."""
        files, size = self.spool.stats()
        try:
            dropped = self.spool.drop_counts()
        except OSError as exc:
            logger.warning("cannot read the spool's drop counts: %s", exc)
            dropped = dict(self.status.dropped_artifacts)
        self.status.spool_files, self.status.spool_bytes = files, size
        self.status.dropped_artifacts = dropped
        return {"spool_files": files, "spool_bytes": size, "dropped_artifacts": dropped}

    def _heartbeat_body(self, spool: dict[str, Any] | None = None) -> Heartbeat:
        report = spool or {}
        stats = SpoolStats(
            files=int(report.get("spool_files", 0)),
            bytes=int(report.get("spool_bytes", 0)),
            dropped=dict(report.get("dropped_artifacts") or {}),
        )
        return Heartbeat(
            sequence=self._next_sequence(),
            agent_version=__version__,
            uptime_seconds=round(time.monotonic() - self._started, 3),
            status="degraded" if self.status.state == "degraded" else "running",
            hostname=socket.gethostname(),
            active_deployment_id=self.state.active_deployment_id if self.state else None,
            active_bundle_digest=self.state.active_bundle_digest if self.state else None,
            keyset_version=self.state.keyset_version if self.state else 0,
            resources=sample_resources(self.settings.state_dir),
            spool=stats,
        )

    async def send_heartbeat(self) -> None:
        """One heartbeat; never raises (errors are logged and reflected in the status)."""
        if self.state is None:
            return
        spool = await asyncio.to_thread(self._spool_report)
        body = self._heartbeat_body(spool)
        try:
            response = await self.client.heartbeat(body)
        except Unauthorized as exc:
            await self._on_unauthorized(exc)
            return
        except Forbidden as exc:
            self._record_failure("degraded", f"forbidden: {exc.detail or exc}")
            return
        except AgentError as exc:
            self._record_failure("offline", str(exc))
            return
        reported: dict[str, int] = dict(body.spool.dropped) if body.spool else {}
        if reported:  # the control plane has them now: count only newer drops from here on
            try:
                await asyncio.to_thread(self.spool.acknowledge_drops, reported)
            except OSError as exc:
                logger.warning("cannot reset the spool's drop counts: %s", exc)
        await self._on_heartbeat(response)

    async def _on_heartbeat(self, response: HeartbeatResponse) -> None:
        assert self.state is not None  # noqa: S101 - run() sets it before scheduling
        if self.state.pending_api_key:
            # The server accepted the rotated key: it is now the only key.
            self.state.api_key, self.state.pending_api_key = self.state.pending_api_key, None
            save_state(self.settings.state_dir, self.state)
            logger.info("rotated agent key confirmed")
        if response.rotated_api_key and response.rotated_api_key != self.state.api_key:
            self.state.pending_api_key = response.rotated_api_key
            save_state(self.settings.state_dir, self.state)
            self.client.set_credentials(self.state.agent_id, response.rotated_api_key)
            logger.info("received a rotated agent key; switching to it")
        self.status.state = "running"
        self.status.last_heartbeat_at = datetime.now(UTC)
        self.status.last_heartbeat_ok = True
        self.status.last_error = None
        self._set_interval(response.next_interval_seconds)
        self._sync_deployment_status()
        self._write_status()
        self.notifier.ready(f"online, heartbeat every {self.interval:g}s")
        if response.keyset_version > self.state.keyset_version:
            await self.refresh_keyset()
        if response.deployment_pending:
            self.trigger_deployment_check()

    async def _on_unauthorized(self, exc: Unauthorized) -> None:
        assert self.state is not None  # noqa: S101
        if self.state.pending_api_key:
            logger.warning("the rotated agent key was refused; falling back to the previous key")
            self.state.pending_api_key = None
            save_state(self.settings.state_dir, self.state)
            self.client.set_credentials(self.state.agent_id, self.state.api_key)
            return
        self._record_failure("degraded", f"unauthorized: {exc.detail or exc}")
        self._set_interval(max(self.interval, UNAUTHORIZED_RECHECK_SECONDS))

    def _record_failure(self, state: str, error: str) -> None:
        self.status.state = state
        self.status.last_heartbeat_ok = False
        self.status.last_error = error
        self._write_status()
        # Offline at boot is still "started": systemd should not wait for the control plane.
        self.notifier.ready(f"{state}: {error}")
        self.notifier.status(f"{state}: {error}")

    def _set_interval(self, seconds: float) -> None:
        seconds = max(1.0, seconds)
        self.status.heartbeat_interval_seconds = seconds
        if seconds == self.interval or self._scheduler is None:
            self.interval = seconds
            return
        self.interval = seconds
        with contextlib.suppress(Exception):
            self._scheduler.reschedule_job(
                "heartbeat", trigger="interval", seconds=seconds, jitter=seconds * JITTER_FRACTION
            )
        logger.info("heartbeat interval is now %gs", seconds)

    async def refresh_keyset(self) -> None:
        """Fetch the key set; pin it only if a currently pinned key signed it."""
        if self.state is None:
            return
        try:
            update = await self.client.signing_keys()
        except AgentError as exc:
            logger.warning("signing-key refresh failed: %s", exc)
            return
        pinned = decode_keyset(self.state.keyset)
        try:
            offered = decode_keyset(update)
            if offered.version == pinned.version:
                return
            accepted = verify_keyset_update(pinned, update, now=int(time.time()))
        except VerificationError as exc:
            logger.error(  # noqa: TRY400 - the reason is the message; no traceback wanted
                "refusing the signing key set offered by the control plane (%s): %s",
                exc.reason,
                exc,
            )
            return
        self.state.keyset = update
        self.state.keyset_version = accepted.version
        save_state(self.settings.state_dir, self.state)
        self.status.keyset_version = accepted.version
        self._write_status()
        logger.info("pinned signing key set version %d", accepted.version)

    async def check_deployment(self) -> None:
        """One deployment round, then schedule the next (never raises)."""
        try:
            await self.deployments.check_once()
        except asyncio.CancelledError:
            # A long-poll in flight when the agent stops is abandoned, not a failure.
            if not self._stopping.is_set():
                raise
            logger.info("deployment check abandoned: the agent is stopping")
        finally:
            self._sync_deployment_status()
            self._write_status()
            self._schedule_deployment(self.deployments.next_delay)

    async def upload_artifacts(self) -> None:
        """One upload round (outbox, then spool), then refresh the spool status; never raises."""
        if self.uploader is None:
            return
        try:
            await self.uploader.upload_pending()
        except Exception:  # a bug must not kill the job
            logger.exception("artifact upload round failed")
        await asyncio.to_thread(self._spool_report)
        self._write_status()

    def trigger_deployment_check(self) -> None:
        """Run the deployment job now, unless a long-poll is already waiting."""
        if not self.deployments.busy:
            logger.info("a deployment is pending; checking now")
            self._schedule_deployment(0.0)

    def _schedule_deployment(self, delay: float) -> None:
        if self._scheduler is None or not self._scheduler.running:
            return
        when = datetime.now(UTC) + timedelta(seconds=delay)
        with contextlib.suppress(Exception):  # the job is gone while shutting down
            self._scheduler.modify_job("deployment", next_run_time=when)

    def _sync_deployment_status(self) -> None:
        if self.state is not None:
            self.status.active_deployment_id = self.state.active_deployment_id
            self.status.active_bundle_digest = self.state.active_bundle_digest

    def _write_status(self) -> None:
        try:
            write_status(self.settings.state_dir, self.status)
        except OSError as exc:
            logger.warning("could not write status file: %s", exc)
