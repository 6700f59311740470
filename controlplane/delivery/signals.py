"""Wakes long-polling agents in this process when a manifest is issued to them.

Other processes' long polls notice new manifests by re-reading the database at least once a
second, so this is an optimisation, not a correctness requirement.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["AgentSignals"]


class AgentSignals:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}

    def notify(self, agent_ids: Iterable[str]) -> None:
        for agent_id in agent_ids:
            event = self._events.pop(agent_id, None)
            if event is not None:
                event.set()

    async def wait(self, agent_id: str, timeout: float) -> None:  # noqa: ASYNC109 - a bounded poll slice
        """Return when ``agent_id`` is notified or after ``timeout`` seconds."""
        event = self._events.setdefault(agent_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=timeout)
