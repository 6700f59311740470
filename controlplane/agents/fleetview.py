"""What a heartbeat answers, per environment, read once a second rather than once a beat.

A heartbeat tells the agent whether a deployment awaits it, the newest signing key-set version,
and a rotated key to take over. Read per beat, that is four queries for every agent every
interval; :class:`FleetView` reads them per *environment* and keeps the answer for ``ttl``
seconds. Changes made in this process show at once (the ``fleet`` change topic); changes made by
another process show within ``ttl``. The view is read in a short reader session of its own,
shared by every request that needs it at that moment. The heartbeat is a hint: an agent learns of a new
manifest from its long-poll in any case.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, TypeAlias

from sqlalchemy import func, select

from controlplane.db.engine import FLEET
from controlplane.db.models import AgentKeyRow, AgentRow, KeySetRow
from controlplane.environments.service import desired_state

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.db import Database
    from controlplane.environments.service import DesiredState

__all__ = ["DeliveryState", "EnvironmentDelivery", "EnvironmentView", "FleetView"]


class EnvironmentDelivery(NamedTuple):
    """What the delivery domain says about an environment (this domain reads none of its
    tables)."""

    #: Agent → sequence of its newest manifest, for agents whose newest manifest still waits.
    waiting: Mapping[str, int]
    #: The environment's deployments rolling out or rolling back, as ``"<id>/<status>"``
    #: (empty: none is moving).
    moving: frozenset[str]


DeliveryState: TypeAlias = Callable[["AsyncSession", str], Awaitable[EnvironmentDelivery]]

_MAX_ENVIRONMENTS = 100_000


@dataclass(frozen=True, slots=True)
class EnvironmentView:
    desired_digest: str | None
    #: Agent → sequence of its newest manifest, for agents whose newest manifest still waits.
    waiting: Mapping[str, int]
    #: The environment's deployments rolling out or rolling back, as ``"<id>/<status>"``
    #: (empty: none is moving).
    moving: frozenset[str]
    pending_keys: frozenset[str]
    keyset_version: int
    read_at: float
    version: int
    #: The whole desired state (``desired_digest`` is its bundle's digest), for deployment
    #: checks to decide against without reading it again.
    desired: DesiredState | None = None

    def deployment_pending(self, agent_id: str, active_digest: str | None) -> bool:
        """A manifest waits for the agent, or it does not run the desired bundle."""
        if agent_id in self.waiting:
            return True
        return self.desired_digest is not None and self.desired_digest != active_digest


class FleetView:
    def __init__(self, database: Database, ttl: float, delivery_state: DeliveryState) -> None:
        self.database = database
        self.ttl = ttl
        self.delivery_state = delivery_state
        self._views: dict[str, EnvironmentView] = {}
        self._reading: dict[str, tuple[int, asyncio.Future[EnvironmentView]]] = {}
        self.reads = 0

    async def environment(self, org_id: str, env_id: str) -> EnvironmentView:
        """The environment's view, read again when older than ``ttl`` or changed here.

        Concurrent callers share one read (its own short reader session), so a fleet whose
        heartbeats all arrive as the view expires costs one read, not one per request. Callers
        must not hold a transaction of their own while they wait (the read needs a pooled
        connection too).
        """
        version = self.database.changes.version(FLEET)
        view = self._views.get(env_id)
        if (
            view is not None
            and view.version == version
            and time.monotonic() - view.read_at <= self.ttl
        ):
            return view
        reading = self._reading.get(env_id)
        if reading is None or reading[0] != version:
            task = asyncio.ensure_future(self._read(org_id, env_id, version))
            reading = (version, task)
            self._reading[env_id] = reading
            task.add_done_callback(lambda _t: self._finish(env_id, reading))
        return await asyncio.shield(reading[1])

    def _finish(self, env_id: str, reading: tuple[int, asyncio.Future[EnvironmentView]]) -> None:
        if self._reading.get(env_id) is reading:
            del self._reading[env_id]
        task = reading[1]
        if task.cancelled() or task.exception() is not None:
            return
        view = task.result()
        current = self._views.get(env_id)
        if current is None or current.read_at <= view.read_at:
            if len(self._views) >= _MAX_ENVIRONMENTS:
                self._views.clear()
            self._views[env_id] = view

    async def _read(self, org_id: str, env_id: str, version: int) -> EnvironmentView:
        self.reads += 1
        read_at = time.monotonic()
        async with self.database.readers() as session:
            desired = await desired_state(session, env_id)
            pending_keys = await session.scalars(
                select(AgentKeyRow.agent_id)
                .join(AgentRow, AgentRow.id == AgentKeyRow.agent_id)
                .where(AgentRow.env_id == env_id, AgentKeyRow.state == "pending")
            )
            keyset = await session.scalar(
                select(func.max(KeySetRow.version)).where(KeySetRow.org_id == org_id)
            )
            delivery = await self.delivery_state(session, env_id)
            return EnvironmentView(
                desired_digest=desired.bundle_digest if desired else None,
                waiting=delivery.waiting,
                moving=delivery.moving,
                pending_keys=frozenset(pending_keys),
                keyset_version=int(keyset or 0),
                read_at=read_at,
                version=version,
                desired=desired,
            )
