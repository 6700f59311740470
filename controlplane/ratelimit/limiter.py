"""Budgets per bucket, counted in a sliding window in memory or Redis.

The strategy is the ``limits`` library's sliding window counter: per key, the count of the current
fixed window plus the previous window's count weighted by how much of it still overlaps the
sliding window. It costs two counters per key, where a moving window keeps one timestamp per
request: at 10,000 agents with 120 requests a minute each, that is 20,000 integers instead of up
to 1.2 million entries, and the in-memory moving window's expiry sweep (one thread hop per key,
restarted after every hit) alone kept a core busy. In one process the counters live in
``limits``' synchronous memory storage, called directly (no lock is ever held across an
``await``); with Redis in its asyncio storage, so every process shares one budget.

The memory storage reclaims expired counters from a timer thread that it starts again 10 ms after
each sweep while hits keep coming: a thread start and a walk over every key a hundred times a
second, each taking the GIL from the event loop (a tenth of a heartbeat's cost in the profile).
:class:`SweptMemoryStorage` keeps the storage and its counting and sweeps on the hit path instead,
at most every ``sweep_seconds``. Reads never depend on the sweep: an expired counter reads as zero
whether or not it was swept yet; the sweep only bounds memory.

Buckets: ``bearer`` (per API/session token), ``agent`` (per agent key), ``artifact_upload`` (per
agent key), ``anonymous`` (per client address: unauthenticated calls and failed
authentications), ``enrollment`` (per environment) and ``enrollment_failures`` (per address).
When the storage is unreachable the limiter fails open and logs it: an outage of Redis must not
take the API down with it.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from limits import RateLimitItem, parse
from limits.aio.strategies import SlidingWindowCounterRateLimiter as AsyncSlidingWindow
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter as SlidingWindow

if TYPE_CHECKING:
    from collections.abc import Callable

    from controlplane.settings import Settings

__all__ = ["Budgets", "RateLimiter", "SweptMemoryStorage", "Verdict"]

logger = logging.getLogger("byteor.controlplane.ratelimit")


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of counting one request against a bucket."""

    bucket: str
    allowed: bool
    limit: int
    remaining: int
    reset_at: int

    @property
    def retry_after(self) -> int:
        return max(1, math.ceil(self.reset_at - time.time()))

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_at),
        }

    def raw_headers(self) -> list[tuple[bytes, bytes]]:
        """:meth:`headers` as ASGI header pairs."""
        return [
            (b"x-ratelimit-limit", b"%d" % self.limit),
            (b"x-ratelimit-remaining", b"%d" % self.remaining),
            (b"x-ratelimit-reset", b"%d" % self.reset_at),
        ]


@dataclass(frozen=True, slots=True)
class Budgets:
    bearer: RateLimitItem
    agent: RateLimitItem
    artifact_upload: RateLimitItem
    anonymous: RateLimitItem
    enrollment: RateLimitItem

    @classmethod
    def from_settings(cls, settings: Settings) -> Budgets:
        return cls(
            bearer=parse(settings.rate_limit_bearer),
            agent=parse(settings.rate_limit_agent),
            artifact_upload=parse(settings.rate_limit_artifact_upload),
            anonymous=parse(settings.rate_limit_anonymous),
            enrollment=parse(settings.rate_limit_enrollment),
        )

    def of(self, bucket: str) -> RateLimitItem:
        if bucket == "enrollment_failures":
            return self.enrollment
        item: RateLimitItem = getattr(self, bucket)
        return item


class SweptMemoryStorage(MemoryStorage):
    """``limits``' memory storage with its expiry sweep run inline every ``sweep_seconds``."""

    def __init__(self, sweep_seconds: float = 5.0) -> None:
        super().__init__()
        self.sweep_seconds = sweep_seconds
        self._next_sweep = time.monotonic() + sweep_seconds

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - the parent's private hook
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self.sweep_seconds
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


# ``limits``' storage base classes wrap these methods of every subclass in an error mapper (to
# ``StorageError``, only when ``wrap_exceptions`` is set, never here), so in a subclass each call
# went through two wrappers, and each of them calls more. Nothing here is mapped: unwrap them.
for _method in (
    *("incr", "get", "get_expiry", "check", "reset", "clear"),
    *("acquire_entry", "get_moving_window"),
    *("acquire_sliding_window_entry", "get_sliding_window", "clear_sliding_window"),
):
    setattr(SweptMemoryStorage, _method, inspect.unwrap(getattr(MemoryStorage, _method)))
del _method


#: How often the record of recently counted keys drops the ones whose windows have passed.
PRUNE_SECONDS = 30.0


def _async_uri(uri: str) -> str:
    return uri if uri.startswith("async+") else f"async+{uri}"


class RateLimiter:
    """Counts hits per (bucket, key) and says whether the budget allows them."""

    def __init__(self, storage_uri: str, budgets: Budgets, key_prefix: str = "byteor") -> None:
        self._local: SlidingWindow | None = None
        self._shared: AsyncSlidingWindow | None = None
        if storage_uri.startswith(("memory", "async+memory")):
            self._local = SlidingWindow(SweptMemoryStorage())
        else:
            storage = storage_from_string(_async_uri(storage_uri), key_prefix=key_prefix)
            self._shared = AsyncSlidingWindow(storage)
        self.budgets = budgets
        #: Called with the bucket name of every refused request (metrics hook).
        self.on_reject: Callable[[str], None] | None = None
        # In one process, when each (bucket, key) was last counted: a key not counted for two
        # windows has nothing left in its sliding window, so peeking at it (every credentialed
        # request peeks at its address) needs no storage read.
        self._counted: dict[tuple[str, str], float] = {}
        self._next_prune = time.monotonic() + PRUNE_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        return cls(
            settings.rate_limit_storage,
            Budgets.from_settings(settings),
            key_prefix=settings.rate_limit_key_prefix,
        )

    def _untouched(self, bucket: str, key: str, item: RateLimitItem) -> Verdict | None:
        """In one process: the full budget of a key not counted within two windows, else None."""
        last = self._counted.get((bucket, key))
        window = item.get_expiry()
        if last is not None and time.monotonic() - last < 2 * window:
            return None
        return Verdict(bucket, True, item.amount, item.amount, math.ceil(time.time() + window))

    def _note_counted(self, bucket: str, key: str) -> None:
        now = time.monotonic()
        self._counted[(bucket, key)] = now
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_SECONDS
            for name, seen in list(self._counted.items()):
                if now - seen >= 2 * self.budgets.of(name[0]).get_expiry():
                    del self._counted[name]

    async def _verdict(self, bucket: str, key: str, *, count: bool) -> Verdict:
        item = self.budgets.of(bucket)
        if self._local is not None and not count and (fresh := self._untouched(bucket, key, item)):
            return fresh
        try:
            if self._local is not None:
                if count:
                    self._note_counted(bucket, key)
                allowed = self._local.hit(item, bucket, key) if count else True
                stats = self._local.get_window_stats(item, bucket, key)
            else:
                assert self._shared is not None  # noqa: S101 - one of the two is set
                allowed = await self._shared.hit(item, bucket, key) if count else True
                stats = await self._shared.get_window_stats(item, bucket, key)
            if not count:
                # A peek is one read: one more request fits exactly when the window has room.
                allowed = stats.remaining >= 1
        except Exception as exc:  # noqa: BLE001 - any storage failure: fail open, loudly
            logger.warning("rate limit storage unavailable (%s); allowing the request", exc)
            return Verdict(bucket, True, item.amount, item.amount, int(time.time()) + 1)
        if not allowed and count and self.on_reject is not None:
            self.on_reject(bucket)
        return Verdict(
            bucket=bucket,
            allowed=allowed,
            limit=item.amount,
            remaining=max(0, stats.remaining),
            reset_at=math.ceil(stats.reset_time),
        )

    async def hit(self, bucket: str, key: str) -> Verdict:
        """Count one request; ``allowed`` is False once the budget is spent."""
        return await self._verdict(bucket, key, count=True)

    async def peek(self, bucket: str, key: str) -> Verdict:
        """Whether one more request would be allowed, without counting it."""
        return await self._verdict(bucket, key, count=False)
