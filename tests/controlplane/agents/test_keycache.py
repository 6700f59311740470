"""The agent-key cache on its own: its bound, its LRU order, expiry, and the sweep loop."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

import pytest

from controlplane.agents.keycache import AGENT_KEYS, AgentKeyCache
from controlplane.auth.principal import AgentPrincipal
from controlplane.db import create_database

if TYPE_CHECKING:
    from controlplane.db import Database

pytestmark = pytest.mark.anyio


def _principal(n: int) -> AgentPrincipal:
    return AgentPrincipal(
        agent_id=f"agt_{n}", key_id=f"agk_{n}", org_id="org_x", env_id="env_x", scopes=frozenset()
    )


def _cache(max_age: float = 5, max_entries: int = 10) -> AgentKeyCache:
    return AgentKeyCache(create_database("sqlite+aiosqlite://"), max_age, max_entries)


async def test_a_fresh_entry_is_served_and_counted() -> None:
    cache = _cache()
    cache.put("d1", _principal(1), time.monotonic())
    assert cache.get("d1") == _principal(1)
    assert cache.get("d2") is None
    assert (cache.hits, cache.misses) == (1, 1)
    assert len(cache) == 1


async def test_the_bound_drops_the_least_recently_used_entry() -> None:
    cache = _cache(max_entries=2)
    now = time.monotonic()
    cache.put("d1", _principal(1), now)
    cache.put("d2", _principal(2), now)
    assert cache.get("d1") is not None  # d1 is now the most recently used
    cache.put("d3", _principal(3), now)
    assert len(cache) == 2
    assert cache.get("d2") is None  # the least recently used went
    assert cache.get("d1") is not None
    assert cache.get("d3") is not None
    cache.put("d1", _principal(1), now)  # putting again also counts as a use
    cache.put("d4", _principal(4), now)
    assert cache.get("d3") is None
    assert cache.get("d1") is not None


async def test_an_expired_entry_is_not_served_but_kept_for_the_next_sweep() -> None:
    cache = _cache(max_age=5)
    cache.put("d1", _principal(1), time.monotonic() - 6)
    cache.put("d2", _principal(2), time.monotonic() - 4)
    assert cache.get("d1") is None
    assert cache.expired("d1")
    assert len(cache) == 2
    assert cache.get("d2") is not None
    assert not cache.expired("d2")
    assert not cache.expired("unknown")


@pytest.mark.parametrize(("max_age", "max_entries"), [(0, 10), (5, 0)])
async def test_a_disabled_cache_keeps_nothing_and_never_sweeps(
    max_age: float, max_entries: int
) -> None:
    cache = _cache(max_age, max_entries)
    assert not cache.enabled
    cache.put("d1", _principal(1), time.monotonic())
    assert cache.get("d1") is None
    assert len(cache) == 0
    await asyncio.wait_for(cache.run(), timeout=1)  # returns at once


class _CountingSweeps(AgentKeyCache):
    """Sweeps that fail the first time, then count; the sweep interval is ``max_age / 3``."""

    def __init__(self, database: Database, max_age: float) -> None:
        super().__init__(database, max_age, 10)
        self.sweeps = 0
        self.third = asyncio.Event()

    async def revalidate(self) -> int:
        self.sweeps += 1
        if self.sweeps == 1:
            raise RuntimeError("the database went away for a moment")
        if self.sweeps == 3:
            self.third.set()
        return 0


async def test_the_sweep_survives_a_failed_sweep_and_skips_an_empty_cache(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = _CountingSweeps(create_database("sqlite+aiosqlite://"), max_age=0.3)
    runner = asyncio.create_task(cache.run())
    await asyncio.sleep(0.35)  # three intervals: nothing cached, nothing swept
    assert cache.sweeps == 0
    cache.put("d1", _principal(1), time.monotonic())
    with caplog.at_level(logging.ERROR, "byteor.controlplane.agent_keys"):
        await asyncio.wait_for(cache.third.wait(), timeout=5)
    assert "revalidating cached agent keys failed" in caplog.text
    assert not runner.done()
    await cache.shutdown()
    await asyncio.wait_for(runner, timeout=1)
    swept = cache.sweeps
    await asyncio.sleep(0.25)
    assert cache.sweeps == swept  # stopped for good


async def test_a_local_key_change_clears_the_cache_once() -> None:
    """A change made in this process (a key rotated, an agent deleted) drops every entry at
    once; entries put after it are served again."""
    cache = _cache()
    cache.put("d1", _principal(1), time.monotonic())
    cache.database.changes.bump(AGENT_KEYS)
    assert cache.get("d1") is None
    assert len(cache) == 0
    cache.put("d2", _principal(2), time.monotonic())
    assert cache.get("d2") == _principal(2)
    assert cache.get("d2") == _principal(2)
    cache.database.changes.bump("fleet")  # another topic: kept
    assert cache.get("d2") == _principal(2)
