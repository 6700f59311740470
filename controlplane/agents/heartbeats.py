"""Heartbeats coalesced in memory and written in batches.

A fleet heartbeating every few seconds must not cost one synchronous database write per request:
each heartbeat replaces the agent's entry in :class:`HeartbeatBuffer`, and a background loop writes
the latest entry of every agent in one transaction every ``heartbeat_flush_seconds`` (and once more
on shutdown). Reads merge the buffer over the database, so an agent is ``online`` the moment its
first heartbeat arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import msgspec
from sqlalchemy import bindparam, update
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from controlplane.db.models import AgentRow

if TYPE_CHECKING:
    from datetime import datetime

    from sqlalchemy import Table
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.db import Database
    from shared.agents import Heartbeat

__all__ = ["HeartbeatBuffer", "PendingHeartbeat"]

logger = logging.getLogger("byteor.controlplane.heartbeats")

_COLUMNS = (
    "last_heartbeat_at",
    "last_sequence",
    "agent_version",
    "status_reported",
    "uptime_seconds",
    "active_deployment_id",
    "active_bundle_digest",
    "resources",
    "spool",
)
#: One Core statement for the whole batch (executemany, bypassing the ORM); an older sequence
#: never overwrites a newer one.
_AGENTS = cast("Table", AgentRow.__table__)
_BATCH_UPDATE = (
    update(_AGENTS)
    .where(_AGENTS.c.id == bindparam("b_id"), _AGENTS.c.last_sequence <= bindparam("b_sequence"))
    .values({name: bindparam(name) for name in _COLUMNS})
)


@dataclass(frozen=True, slots=True)
class PendingHeartbeat:
    """The newest heartbeat of one agent, not yet written."""

    received_at: datetime
    heartbeat: Heartbeat

    def columns(self) -> dict[str, Any]:
        hb = self.heartbeat
        return {
            "last_heartbeat_at": self.received_at,
            "last_sequence": hb.sequence,
            "agent_version": hb.agent_version or None,
            "status_reported": hb.status,
            "uptime_seconds": hb.uptime_seconds,
            "active_deployment_id": hb.active_deployment_id,
            "active_bundle_digest": hb.active_bundle_digest,
            "resources": msgspec.to_builtins(hb.resources),
            "spool": msgspec.to_builtins(hb.spool) if hb.spool is not None else None,
        }


class HeartbeatBuffer:
    """Latest heartbeat per agent, flushed in batches by :meth:`run`."""

    def __init__(self, database: Database, flush_seconds: float) -> None:
        self.database = database
        self.flush_seconds = flush_seconds
        self._pending: dict[str, PendingHeartbeat] = {}
        #: The batch being written: still visible to readers until its transaction commits, so
        #: an agent never looks offline for the length of a flush.
        self._flushing: dict[str, PendingHeartbeat] = {}
        self._stopping = asyncio.Event()
        self.received = 0
        self.flushes = 0

    def record(self, agent_id: str, received_at: datetime, heartbeat: Heartbeat) -> None:
        """Keep ``heartbeat`` unless a newer sequence from the same agent is already waiting."""
        self.received += 1
        current = self._pending.get(agent_id)
        if current is None or heartbeat.sequence >= current.heartbeat.sequence:
            self._pending[agent_id] = PendingHeartbeat(received_at, heartbeat)

    def pending(self, agent_id: str) -> PendingHeartbeat | None:
        """The newest heartbeat of ``agent_id`` not yet committed to the database, if any."""
        return self._pending.get(agent_id) or self._flushing.get(agent_id)

    async def flush(self) -> int:
        """Write every waiting heartbeat in one transaction; returns how many agents.

        One executemany of a single UPDATE (one round trip to the driver for the whole batch);
        if the batch fails as a whole, it is split in halves, each written in a savepoint, and
        the halves that fail are split again, so that a single unwritable entry cannot hold
        back the rest of the fleet, and finding it costs a few statements, not one per agent
        (the batch holds the one writer connection meanwhile).
        """
        if not self._pending:
            return 0
        batch, self._pending = self._pending, {}
        self._flushing = batch
        try:
            # In id order, the order every path that locks several agents takes: a rollout
            # issuing manifests in another process while this batch locked the same rows in
            # arrival order deadlocked on PostgreSQL (both retried, the rollout five times).
            rows = [
                {"b_id": agent_id, "b_sequence": entry.heartbeat.sequence, **entry.columns()}
                for agent_id, entry in sorted(batch.items())
            ]
            async with self.database.sessionmaker() as session:
                try:
                    await session.execute(_BATCH_UPDATE, rows)
                except (OperationalError, PoolTimeout):
                    raise  # the database is busy or gone, not the data: retry the whole batch
                except (SQLAlchemyError, OverflowError, ValueError) as error:
                    await session.rollback()
                    logger.warning(
                        "a batch of %d heartbeats failed (%s); writing it in parts",
                        len(rows),
                        type(error).__name__,
                    )
                    await self._write_in_parts(session, rows)
                await session.commit()
        except Exception:
            # Put the batch back (newer entries that arrived meanwhile win) and retry next tick.
            for agent_id, entry in batch.items():
                self._pending.setdefault(agent_id, entry)
            raise
        finally:
            self._flushing = {}
        self.flushes += 1
        return len(batch)

    @classmethod
    async def _write_in_parts(cls, session: AsyncSession, rows: list[dict[str, Any]]) -> None:
        """Write ``rows`` (which failed together) in halves, splitting the failing ones again."""
        middle = len(rows) // 2
        for part in (rows[:middle], rows[middle:]):
            if not part:
                continue
            try:
                async with session.begin_nested():
                    await session.execute(_BATCH_UPDATE, part)
            except (OperationalError, PoolTimeout):
                raise
            except (SQLAlchemyError, OverflowError, ValueError) as error:
                if len(part) > 1:
                    await cls._write_in_parts(session, part)
                else:
                    logger.warning(
                        "dropping an unwritable heartbeat of agent %s (%s)",
                        part[0]["b_id"],
                        type(error).__name__,
                    )

    async def run(self) -> None:
        """Flush periodically until :meth:`shutdown`, then flush what is left."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.flush_seconds)
            try:
                await self.flush()
            except Exception:
                logger.exception("writing heartbeats failed; keeping them for the next flush")

    async def shutdown(self) -> None:
        self._stopping.set()
