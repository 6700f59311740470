"""Wakes long-polling agents in this process when a manifest is issued to them.

Long polls in other processes notice new manifests through the environment's shared view
(``FleetView``, read once per environment per second), so this is an optimisation, not a
correctness requirement.
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

    async def wait(self, agent_id: str, timeout: float) -> bool:  # noqa: ASYNC109 - a bounded poll slice
        """Wait until ``agent_id`` is notified (``True``) or ``timeout`` seconds pass (``False``)."""
        event = self._events.setdefault(agent_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=timeout)
        return event.is_set()
