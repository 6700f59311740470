"""Retry policy of control plane calls: full-jitter exponential backoff that honours Retry-After.

Only :class:`~agent.errors.TransientError` is retried. Each wait is
``max(retry_after, uniform(0, min(max_backoff, multiplier * 2 ** (attempt - 1))))``: the jitter
spreads a fleet of agents out after an outage, and the server's ``Retry-After`` is a floor, never
shortened.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Final, TypeAlias

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from agent.errors import TransientError

__all__ = [
    "DEFAULT_BACKOFF_MULTIPLIER",
    "MAX_RETRY_AFTER_SECONDS",
    "RetryAfterWait",
    "Sleep",
    "build_retrying",
    "parse_retry_after",
]

#: The first backoff window is ``[0, multiplier]`` seconds; it doubles per attempt.
DEFAULT_BACKOFF_MULTIPLIER: Final = 1.0
#: A Retry-After beyond this (seconds) is treated as this: a broken or hostile value must not
#: park the agent for days.
MAX_RETRY_AFTER_SECONDS: Final = 3600.0

#: An async sleep function, as :func:`asyncio.sleep`.
Sleep: TypeAlias = Callable[[float], Awaitable[None]]

logger = logging.getLogger(__name__)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` header (RFC 9110 §10.2.3) into seconds to wait.

    Args:
        value: The header value: delta-seconds (``"7"``) or an HTTP-date
            (``"Wed, 21 Oct 2015 07:28:00 GMT"``); ``None`` if absent.
        now: The current time for the HTTP-date form (default: the system clock).

    Returns:
        Seconds to wait, in ``[0, MAX_RETRY_AFTER_SECONDS]``; ``None`` if absent or unparseable.
        A date in the past means 0.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if text.isdigit():
        seconds = float(text)
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # "-0000" dates parse naive; HTTP-dates are always UTC
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


class RetryAfterWait(wait_base):
    """Tenacity wait: the jittered backoff, but never less than the failure's ``retry_after``."""

    def __init__(self, backoff: wait_base) -> None:
        """Wrap ``backoff`` (e.g. :class:`tenacity.wait_random_exponential`)."""
        self.backoff = backoff

    def __call__(self, retry_state: RetryCallState) -> float:
        """Return the seconds to sleep before the next attempt."""
        delay = self.backoff(retry_state)
        outcome = retry_state.outcome
        if outcome is not None and outcome.failed:
            error = outcome.exception()
            if isinstance(error, TransientError) and error.retry_after is not None:
                return max(delay, error.retry_after)
        return delay


def _log_retry(retry_state: RetryCallState) -> None:
    outcome = retry_state.outcome
    error = outcome.exception() if outcome is not None and outcome.failed else None
    delay = retry_state.next_action.sleep if retry_state.next_action is not None else 0.0
    logger.warning(
        "control plane call failed, retrying in %.1fs (attempt %d): %s",
        delay,
        retry_state.attempt_number,
        error,
    )


def build_retrying(
    *,
    max_attempts: int,
    max_backoff: float,
    multiplier: float = DEFAULT_BACKOFF_MULTIPLIER,
    idempotent: bool = True,
    sleep: Sleep | None = None,
) -> AsyncRetrying:
    """Build the retry controller of one control plane call.

    Args:
        max_attempts: Most attempts, the first one included.
        max_backoff: Upper bound of the jittered backoff (Retry-After may exceed it).
        multiplier: Width in seconds of the first backoff window.
        idempotent: ``False`` for requests that must not be repeated once the server may have
            acted on them (enrollment): only failures with ``maybe_processed=False`` are retried.
        sleep: Async sleep function (default :func:`asyncio.sleep`; tests inject one that records
            instead of sleeping).

    Returns:
        An :class:`tenacity.AsyncRetrying` that re-raises the last error when it gives up.
    """

    def retryable(error: BaseException) -> bool:
        return isinstance(error, TransientError) and (idempotent or not error.maybe_processed)

    return AsyncRetrying(
        sleep=sleep or asyncio.sleep,
        stop=stop_after_attempt(max_attempts),
        wait=RetryAfterWait(wait_random_exponential(multiplier=multiplier, max=max_backoff)),
        retry=retry_if_exception(retryable),
        before_sleep=_log_retry,
        reraise=True,
    )
