"""A bounded in-memory cache of authenticated agent keys, revalidated in the background.

An agent authenticates on every request; looking its key up in the database each time costs a
transaction per heartbeat. Entries live at most ``max_age`` seconds past their last validation:
a background sweep re-checks every cached key against the database in a few batched reads every
``max_age / 2`` seconds, so keys in use never expire, while a key revoked in any process (agent
deleted, key rotated and replaced, environment deleted) stops working here within ``max_age``.
Changes made in this process clear the cache at once (the ``agent_keys`` change topic).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select

from controlplane.db.engine import AGENT_KEYS
from controlplane.db.models import AgentKeyRow

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
        self.hits = 0
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
            if entry is not None:
                del self._entries[digest]
            self.misses += 1
            return None
        self._entries.move_to_end(digest)
        self.hits += 1
        return entry.principal

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
                valid.update(
                    await session.scalars(
                        select(AgentKeyRow.id).where(
                            AgentKeyRow.id.in_(key_ids),
                            AgentKeyRow.state == "active",
                            AgentKeyRow.revoked_at.is_(None),
                        )
                    )
                )
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
        """Revalidate every ``max_age / 2`` seconds until :meth:`shutdown`."""
        if not self.enabled:
            return
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.max_age / 2)
            if self._stopping.is_set() or not self._entries:
                continue
            try:
                await self.revalidate()
            except Exception:
                # Entries age out on their own; the next sweep tries again.
                logger.exception("revalidating cached agent keys failed")

    async def shutdown(self) -> None:
        self._stopping.set()
