"""Agents' deployment reports, applied in batches: one write transaction for many reports.

During a rollout every host reports twice within seconds. Applied one by one, each report is a
write transaction, and on SQLite writers take turns: while the event loop is busy with the
fleet, each transaction holds the write lock for several event-loop round trips, and reports
queue behind each other. :class:`ReportBatcher` applies every report waiting at that moment in
one transaction (all of them read and moved in a few statements; a refused report is checked
before its target moves, so it fails alone and changes nothing), reconciles each touched
deployment once, commits once and only then answers each request: a report is acknowledged
only once it is durable, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from controlplane.delivery.rollout import reconcile, record_reports
from controlplane.errors import DomainError

if TYPE_CHECKING:
    from collections.abc import Callable

    from controlplane.db import Database
    from controlplane.db.models import DeploymentRow
    from controlplane.delivery.rollout import Delivery
    from shared.deployments import DeploymentReport

__all__ = ["ReportBatcher"]

logger = logging.getLogger("byteor.controlplane.reports")

#: Most reports applied in one transaction. Large: under load every batch waits a few turns
#: of the event loop (each can take a second when a rollout wakes the fleet at once), so what
#: bounds the reports applied per second is the batch, not the statements (a batch is a few
#: statements whatever its size, with ``IN`` lists well within the parameter limits).
MAX_BATCH = 2_000


@dataclass
class _Pending:
    agent_id: str
    report: DeploymentReport
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class ReportBatcher:
    def __init__(self, database: Database, delivery: Callable[[], Delivery]) -> None:
        self.database = database
        #: A fresh Delivery per batch (it caches the signing keys it reads).
        self.delivery = delivery
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.batches = 0

    async def submit(self, agent_id: str, report: DeploymentReport) -> None:
        """Apply ``report``; returns once it is committed, raises what applying it raised."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="byteor-report-batcher")
        pending = _Pending(agent_id, report)
        self._queue.put_nowait(pending)
        await asyncio.shield(pending.done)

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._apply(batch)
            except Exception as exc:  # the transaction failed: every report in it did
                logger.exception("applying %d deployment reports failed", len(batch))
                for item in batch:
                    if not item.done.done():
                        item.done.set_exception(exc)
            else:
                for item in batch:
                    if not item.done.done():
                        item.done.set_result(None)
            self.batches += 1

    async def _apply(self, batch: list[_Pending]) -> None:
        touched: dict[str, DeploymentRow] = {}
        async with self.database.sessionmaker() as session:
            # A few statements for the whole batch, not a few per report: on a busy event loop
            # every statement waits its turn, and the writer's one connection is held meanwhile.
            outcomes = await record_reports(
                session, [(item.agent_id, item.report) for item in batch]
            )
            for item, outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, DomainError):
                    item.done.set_exception(outcome)  # answered at once: nothing of it is kept
                elif outcome is not None:
                    touched[outcome.id] = outcome
            delivery = self.delivery()
            for deployment_id in sorted(touched):
                await reconcile(session, delivery, touched[deployment_id])
            await session.commit()

    async def shutdown(self) -> None:
        """Stop (after the server finished its requests); anything still queued fails."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.done.done():
                item.done.set_exception(RuntimeError("the control plane is shutting down"))
