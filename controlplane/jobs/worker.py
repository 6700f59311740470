"""The worker loop: claim a due job, run its handler, record the outcome; repeat until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from controlplane.jobs.engine import claim_next, finish

if TYPE_CHECKING:
    from controlplane.agents.heartbeats import HeartbeatBuffer
    from controlplane.blobs import BlobStore
    from controlplane.db import Database
    from controlplane.delivery.signals import AgentSignals
    from controlplane.settings import Settings
    from controlplane.signing.kek import KeyEncryptionKey

__all__ = ["JobContext", "JobHandler", "Worker"]

logger = logging.getLogger("byteor.controlplane.jobs")


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler may use; handlers open their own sessions and must be idempotent."""

    database: Database
    settings: Settings
    kek: KeyEncryptionKey
    blobs: BlobStore
    job_id: str
    attempt: int
    final_attempt: bool
    signals: AgentSignals | None = None
    #: This process's coalesced heartbeats (combined mode), so "online" is current to the second.
    heartbeats: HeartbeatBuffer | None = None


JobHandler = Callable[[JobContext, dict[str, Any]], Awaitable[None]]


class Worker:
    """Runs jobs of the registered kinds until :meth:`shutdown` is called."""

    def __init__(
        self,
        *,
        database: Database,
        settings: Settings,
        kek: KeyEncryptionKey,
        blobs: BlobStore,
        handlers: dict[str, JobHandler],
        signals: AgentSignals | None = None,
        heartbeats: HeartbeatBuffer | None = None,
    ) -> None:
        self.database = database
        self.settings = settings
        self.kek = kek
        self.blobs = blobs
        self.handlers = handlers
        self.signals = signals
        self.heartbeats = heartbeats
        self.worker_id = f"{socket.gethostname()}:{secrets.token_hex(4)}"
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def notify(self) -> None:
        """Look for work now (called after enqueueing in this process)."""
        self._wake.set()

    async def run(self) -> None:
        """Process jobs until :meth:`shutdown`; a failing database only delays the next poll."""
        logger.info("job worker %s started", self.worker_id)
        lease = timedelta(seconds=self.settings.job_lease_seconds)
        kinds = sorted(self.handlers)
        while not self._stopping.is_set():
            try:
                async with self.database.sessionmaker() as session:
                    job = await claim_next(session, self.worker_id, lease, kinds)
            except Exception:
                logger.exception("claiming a job failed; retrying after the poll interval")
                job = None
            if job is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._wake.wait(), timeout=self.settings.job_poll_interval_seconds
                    )
                continue
            await self._run_one(job.id, job.kind, job.payload, job.attempts, job.max_attempts)
        logger.info("job worker %s stopped", self.worker_id)

    async def _run_one(
        self, job_id: str, kind: str, payload: dict[str, Any], attempt: int, max_attempts: int
    ) -> None:
        context = JobContext(
            database=self.database,
            settings=self.settings,
            kek=self.kek,
            blobs=self.blobs,
            job_id=job_id,
            attempt=attempt,
            final_attempt=attempt >= max_attempts,
            signals=self.signals,
            heartbeats=self.heartbeats,
        )
        error: BaseException | None = None
        try:
            await self.handlers[kind](context, payload)
        except Exception as exc:  # noqa: BLE001 - every handler error is recorded on the job
            error = exc
            logger.warning("job %s (%s) attempt %d failed: %s", job_id, kind, attempt, exc)
        async with self.database.sessionmaker() as session:
            state = await finish(session, job_id, self.worker_id, error)
        logger.info("job %s (%s) -> %s", job_id, kind, state)

    async def shutdown(self) -> None:
        """Stop after the current job (repeat-safe)."""
        self._stopping.set()
        self._wake.set()
