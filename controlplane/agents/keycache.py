"""A bounded in-memory cache of authenticated agent keys, revalidated in the background.

An agent authenticates on every request; looking its key up in the database each time costs a
transaction per heartbeat. Entries live at most ``max_age`` seconds past their last validation:
a background sweep re-checks every cached key against the database in a few batched reads every
``max_age / 3`` seconds (each counts the batch's keys still active, and reads which ones only
when a key is missing), so keys in use never expire, while a key revoked in any process (agent
deleted, key rotated and replaced, environment deleted) stops working here within ``max_age``.
Changes made in this process clear the cache at once (the ``agent_keys`` change topic).

An entry past ``max_age`` is not served, but it is kept: finding one means the sweep is late (a
loaded event loop runs its timer late). The request that finds it runs the sweep itself
(:meth:`AgentKeyCache.refresh`; requests that find one meanwhile wait for that sweep), so the
whole cache is fresh again after one batched read, instead of every request of the fleet reading
its own key until the timer comes round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import func, select

from controlplane.db.engine import AGENT_KEYS
from controlplane.db.models import AgentKeyRow
from controlplane.db.values import one_of

if TYPE_CHECKING:
    from controlplane.auth.principal import AgentPrincipal
    from controlplane.db import Database

__all__ = ["AGENT_KEYS", "AgentKeyCache"]

logger = logging.getLogger("byteor.controlplane.agent_keys")

#: Keys per statement: within SQLite's (32,766) and PostgreSQL's (32,767) parameter limits,
#: and few statements per sweep (each one is a round trip through the event loop).
_BATCH = 5_000


@dataclass(slots=True)
class _Entry:
    principal: AgentPrincipal
    validated_at: float


class AgentKeyCache:
    """Key digest → authenticated agent, for at most ``max_age`` seconds after validation."""

    def __init__(self, database: Database, max_age: float, max_entries: int) -> None:
        self.database = database
        self.max_age = max_age
        self.max_entries = max_entries
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._seen = database.changes.version(AGENT_KEYS)
        self._stopping = asyncio.Event()
        self._wake: asyncio.Future[None] | None = None
        self._refreshing: asyncio.Future[None] | None = None
        self.hits = 0
        #: Sweeps run by requests that found an expired entry (see :meth:`refresh`).
        self.refreshes = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.max_age > 0 and self.max_entries > 0

    def __len__(self) -> int:
        return len(self._entries)

    def _follow_local_changes(self) -> None:
        version = self.database.changes.version(AGENT_KEYS)
        if version != self._seen:
            self._seen = version
            self._entries.clear()

    def get(self, digest: str) -> AgentPrincipal | None:
        """The agent this key digest authenticated recently, if still within ``max_age``."""
        if not self.enabled:
            return None
        self._follow_local_changes()
        entry = self._entries.get(digest)
        if entry is None or time.monotonic() - entry.validated_at > self.max_age:
            self.misses += 1  # an expired entry stays: the next sweep may vouch for it again
            return None
        self._entries.move_to_end(digest)
        self.hits += 1
        return entry.principal

    def expired(self, digest: str) -> bool:
        """Whether ``digest`` has an entry, past ``max_age`` (the sweep is late)."""
        entry = self._entries.get(digest)
        return entry is not None and time.monotonic() - entry.validated_at > self.max_age

    async def refresh(self) -> None:
        """Revalidate every entry now, in this task; if a refresh is running, wait for it.

        For a request that found its entry expired: one batched read makes every entry fresh
        (or drops it), where each request reading its own key would cost one read each.
        """
        running = self._refreshing
        if running is not None:
            await asyncio.shield(running)
            return
        self._refreshing = done = asyncio.get_running_loop().create_future()
        try:
            self.refreshes += 1
            await self.revalidate()
        finally:
            self._refreshing = None
            done.set_result(None)

    def put(self, digest: str, principal: AgentPrincipal, validated_at: float) -> None:
        """Remember a key validated (read from the database) at ``validated_at`` (monotonic)."""
        if not self.enabled:
            return
        self._follow_local_changes()
        self._entries[digest] = _Entry(principal, validated_at)
        self._entries.move_to_end(digest)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    async def revalidate(self) -> int:
        """Re-check every cached key in batched reads; drop the ones no longer active.

        Returns how many entries were dropped.
        """
        seen = self._seen
        snapshot = list(self._entries.items())
        valid: set[str] = set()
        # On the sweep connection: requests may hold every pooled reader, and a sweep that
        # queued behind them would time out and let every entry expire at once.
        async with self.database.background() as session:
            await session.connection()
            # The read's snapshot is taken after this instant: what it finds holds from here.
            started = time.monotonic()
            for offset in range(0, len(snapshot), _BATCH):
                key_ids = [
                    entry.principal.key_id for _, entry in snapshot[offset : offset + _BATCH]
                ]
                active = (
                    one_of(session, AgentKeyRow.id, key_ids),
                    AgentKeyRow.state == "active",
                    AgentKeyRow.revoked_at.is_(None),
                )
                # Nearly always every key is still active: counting them says so in one row
                # (the ids are primary keys, each matches at most once); only a batch that
                # lost a key reads which ones are left.
                still = await session.scalar(
                    select(func.count()).select_from(AgentKeyRow).where(*active)
                )
                if still == len(set(key_ids)):
                    valid.update(key_ids)
                else:
                    valid.update(await session.scalars(select(AgentKeyRow.id).where(*active)))
        dropped = 0
        if self._seen != seen:  # cleared meanwhile: nothing to refresh
            return 0
        for digest, entry in snapshot:
            current = self._entries.get(digest)
            if current is not entry:
                continue
            if entry.principal.key_id in valid:
                entry.validated_at = max(entry.validated_at, started)
            else:
                del self._entries[digest]
                dropped += 1
        return dropped

    async def run(self) -> None:
        """Revalidate every ``max_age / 3`` seconds until :meth:`shutdown`.

        The cadence is fixed: a sweep is due one interval after the previous one was due, not
        after it ended, and the wait between them is a single timer (``asyncio.wait_for``
        takes several turns of the loop to wake). Under load every turn of the event loop can
        take a second; a sweep that slipped past ``max_age`` would let every entry expire at
        once, and every request of the fleet would then read its key from the database, which
        is what made the loop slow in the first place. A third of ``max_age`` leaves two
        intervals of slack.
        """
        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        interval = self.max_age / 3
        due = loop.time() + interval
        while not self._stopping.is_set():
            await self._pause(due - loop.time())
            if self._stopping.is_set():
                return
            due = max(due + interval, loop.time())  # no burst of sweeps to catch up
            if not self._entries:
                continue
            try:
                await self.revalidate()
            except Exception:
                # Entries age out on their own; the next sweep tries again.
                logger.exception("revalidating cached agent keys failed")

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds`` (one timer), or until :meth:`shutdown`."""
        loop = asyncio.get_running_loop()
        self._wake = wake = loop.create_future()
        timer = loop.call_later(max(0.0, seconds), _resolve, wake)
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None

    async def shutdown(self) -> None:
        self._stopping.set()
        if self._wake is not None:
            _resolve(self._wake)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
