"""``Jobs``: enqueue in the request's transaction, then wake this process's worker after commit.

Routes receive it as the ``jobs`` dependency and pass it to services, so the wake-up lives in one
place: the job is visible to any worker once the transaction commits; the local worker is told at
that moment rather than at its next poll.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from controlplane.jobs.engine import enqueue

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

__all__ = ["Jobs"]


class Jobs:
    """Enqueues durable jobs on ``session`` and calls ``wake`` once that session commits."""

    def __init__(self, session: AsyncSession, wake: Callable[[], None] | None = None) -> None:
        self.session = session
        self._wake = wake
        self._armed = False

    async def enqueue(
        self,
        kind: str,
        payload: dict[str, Any],
        *,
        dedupe_key: str | None = None,
        run_at: datetime | None = None,
        max_attempts: int = 5,
    ) -> str:
        """Add a job in the session's transaction; see :func:`controlplane.jobs.engine.enqueue`."""
        job_id = await enqueue(
            self.session,
            kind,
            payload,
            dedupe_key=dedupe_key,
            run_at=run_at,
            max_attempts=max_attempts,
        )
        self._arm()
        return job_id

    def _arm(self) -> None:
        if self._wake is None or self._armed:
            return
        self._armed = True
        wake = self._wake

        def after_commit(_session: Session) -> None:
            self._armed = False
            wake()

        event.listen(self.session.sync_session, "after_commit", after_commit, once=True)
