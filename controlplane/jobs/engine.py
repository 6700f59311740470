"""The job state machine and the queue operations.

States: ``queued -> running -> completed``; a failed attempt goes ``running -> retrying`` (with
exponential backoff and full jitter) until ``max_attempts``, then ``dead_letter``; a handler that
raises :class:`PermanentJobError` goes straight to ``failed``. A ``running`` job whose lease expired
(its worker crashed) is claimed again. On PostgreSQL claims use ``FOR UPDATE SKIP LOCKED`` so any
number of workers can run side by side; SQLite transactions are serial already.
"""

from __future__ import annotations

import enum
import random
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError

from controlplane.db.models import JobRow
from controlplane.db.types import utcnow
from shared.ids import new_id

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

__all__ = ["JobState", "PermanentJobError", "claim_next", "enqueue", "finish", "transition"]

MAX_BACKOFF_SECONDS = 300


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    RETRYING = "retrying"
    DEAD_LETTER = "dead_letter"


ALLOWED = {
    JobState.QUEUED: {JobState.RUNNING},
    JobState.RETRYING: {JobState.RUNNING},
    JobState.RUNNING: {
        JobState.RUNNING,  # reclaimed after its lease expired
        JobState.COMPLETED,
        JobState.RETRYING,
        JobState.FAILED,
        JobState.DEAD_LETTER,
    },
    JobState.COMPLETED: set(),
    JobState.FAILED: set(),
    JobState.DEAD_LETTER: set(),
}


class PermanentJobError(Exception):
    """A handler error that retrying cannot fix; the job ends ``failed`` at once."""


def transition(job: JobRow, to: JobState) -> None:
    """Move ``job`` to ``to``; the one place a job's state is assigned."""
    current = JobState(job.state)
    if to not in ALLOWED[current]:
        raise ValueError(f"illegal job transition {current} -> {to}")
    job.state = to.value


async def enqueue(
    session: AsyncSession,
    kind: str,
    payload: dict[str, Any],
    *,
    dedupe_key: str | None = None,
    max_attempts: int = 5,
    delay: timedelta | None = None,
    run_at: datetime | None = None,
) -> str:
    """Add a job in the caller's transaction (it runs only if that transaction commits).

    A job runs as soon as a worker is free, or not before ``run_at`` (or ``delay`` from now):
    time-based work (deadlines, expiries) is scheduled for its time, never retried until then.
    With ``dedupe_key``, enqueueing the same work twice returns the existing job's id.
    """
    if dedupe_key is not None:
        existing = await session.scalar(select(JobRow.id).where(JobRow.dedupe_key == dedupe_key))
        if existing is not None:
            return existing
    job = JobRow(
        id=new_id("job"),
        kind=kind,
        payload=payload,
        state=JobState.QUEUED.value,
        dedupe_key=dedupe_key,
        max_attempts=max_attempts,
        run_after=run_at if run_at is not None else utcnow() + (delay or timedelta()),
    )
    try:
        async with session.begin_nested():
            session.add(job)
    except IntegrityError:
        existing = await session.scalar(select(JobRow.id).where(JobRow.dedupe_key == dedupe_key))
        if existing is None:
            raise
        return existing
    return job.id


async def claim_next(
    session: AsyncSession, worker_id: str, lease: timedelta, kinds: list[str]
) -> JobRow | None:
    """Claim the next due job (committing the claim) or return ``None``."""
    now = utcnow()
    due = or_(
        and_(
            JobRow.state.in_([JobState.QUEUED.value, JobState.RETRYING.value]),
            JobRow.run_after <= now,
        ),
        and_(JobRow.state == JobState.RUNNING.value, JobRow.lease_expires_at < now),
    )
    statement = (
        select(JobRow)
        .where(due, JobRow.kind.in_(kinds))
        .order_by(JobRow.run_after, JobRow.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    job = await session.scalar(statement)
    if job is None:
        await session.commit()
        return None
    transition(job, JobState.RUNNING)
    job.attempts += 1
    job.locked_by = worker_id
    job.lease_expires_at = now + lease
    await session.commit()
    return job


def _backoff(attempts: int) -> timedelta:
    ceiling = min(MAX_BACKOFF_SECONDS, 2**attempts)
    return timedelta(seconds=random.uniform(0, ceiling))  # noqa: S311 - jitter, not crypto


async def finish(
    session: AsyncSession,
    job_id: str,
    worker_id: str,
    error: BaseException | None,
    now: datetime | None = None,
) -> JobState | None:
    """Record the outcome of an attempt; a worker that lost its lease records nothing."""
    job = await session.scalar(select(JobRow).where(JobRow.id == job_id).with_for_update())
    if job is None or job.state != JobState.RUNNING.value or job.locked_by != worker_id:
        await session.rollback()
        return None
    now = now or utcnow()
    if error is None:
        transition(job, JobState.COMPLETED)
        job.last_error = None
    else:
        job.last_error = f"{type(error).__name__}: {error}"[:4000]
        if isinstance(error, PermanentJobError):
            transition(job, JobState.FAILED)
        elif job.attempts >= job.max_attempts:
            transition(job, JobState.DEAD_LETTER)
        else:
            transition(job, JobState.RETRYING)
            job.run_after = now + _backoff(job.attempts)
    job.lease_expires_at = None
    job.locked_by = None
    state = JobState(job.state)
    await session.commit()
    return state
