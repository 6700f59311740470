"""The durable job engine against the real database: states, retries, leases, dedupe, races."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from controlplane.db.models import JobRow
from controlplane.db.types import utcnow
from controlplane.jobs import JobContext, JobState, PermanentJobError, Worker, enqueue
from controlplane.jobs.engine import claim_next, finish, transition
from tests.conftest import Stack

pytestmark = pytest.mark.anyio

LEASE = timedelta(seconds=30)


async def job(stack: Stack, job_id: str) -> JobRow:
    async with stack.database.sessionmaker() as session:
        row = await session.get(JobRow, job_id)
    assert row is not None
    return row


async def add(stack: Stack, kind: str, payload: dict[str, Any] | None = None, **kwargs: Any) -> str:
    async with stack.database.sessionmaker() as session:
        job_id = await enqueue(session, kind, payload or {}, **kwargs)
        await session.commit()
    return job_id


async def claim(stack: Stack, kind: str, worker: str = "w1") -> JobRow | None:
    async with stack.database.sessionmaker() as session:
        return await claim_next(session, worker, LEASE, [kind])


async def done(
    stack: Stack, job_id: str, error: BaseException | None, worker: str = "w1"
) -> JobState | None:
    async with stack.database.sessionmaker() as session:
        return await finish(session, job_id, worker, error)


async def test_retry_with_backoff_then_dead_letter(stack: Stack) -> None:
    kind = stack.unique("flaky")
    job_id = await add(stack, kind, max_attempts=3)
    for attempt in (1, 2):
        claimed = await claim(stack, kind)
        assert claimed is not None
        assert (claimed.id, claimed.attempts, claimed.state) == (job_id, attempt, "running")
        assert await done(stack, job_id, RuntimeError("boom")) is JobState.RETRYING
        row = await job(stack, job_id)
        assert row.run_after > utcnow() - timedelta(seconds=1)
        assert row.last_error == "RuntimeError: boom"
        assert await claim(stack, kind) is None or row.run_after <= utcnow()
        async with stack.database.sessionmaker() as session:
            await session.execute(
                update(JobRow).where(JobRow.id == job_id).values(run_after=utcnow())
            )
            await session.commit()
    assert await claim(stack, kind) is not None
    assert await done(stack, job_id, RuntimeError("boom")) is JobState.DEAD_LETTER
    assert await claim(stack, kind) is None


async def test_permanent_error_fails_at_once(stack: Stack) -> None:
    kind = stack.unique("doomed")
    job_id = await add(stack, kind)
    assert await claim(stack, kind) is not None
    assert await done(stack, job_id, PermanentJobError("bad input")) is JobState.FAILED
    assert (await job(stack, job_id)).attempts == 1


async def test_expired_lease_is_reclaimed_and_the_old_worker_is_ignored(stack: Stack) -> None:
    kind = stack.unique("crashy")
    job_id = await add(stack, kind)
    assert await claim(stack, kind, "crashed") is not None
    assert await claim(stack, kind, "other") is None  # lease still held
    async with stack.database.sessionmaker() as session:
        await session.execute(
            update(JobRow).where(JobRow.id == job_id).values(lease_expires_at=utcnow() - LEASE)
        )
        await session.commit()
    reclaimed = await claim(stack, kind, "other")
    assert reclaimed is not None
    assert (reclaimed.attempts, reclaimed.locked_by) == (2, "other")
    assert await done(stack, job_id, None, worker="crashed") is None
    assert await done(stack, job_id, None, worker="other") is JobState.COMPLETED


async def test_dedupe_key_and_rollback(stack: Stack) -> None:
    kind = stack.unique("once")
    key = stack.unique("key")
    first = await add(stack, kind, dedupe_key=key)
    assert await add(stack, kind, dedupe_key=key) == first
    async with stack.database.sessionmaker() as session:
        await enqueue(session, kind, {"x": 1})
        await session.rollback()
    async with stack.database.sessionmaker() as session:
        kinds = list(await session.scalars(select(JobRow.id).where(JobRow.kind == kind)))
    assert kinds == [first]


def test_illegal_transition_is_refused() -> None:
    row = JobRow(state="completed")
    with pytest.raises(ValueError, match="completed -> running"):
        transition(row, JobState.RUNNING)


async def test_two_workers_run_every_job_exactly_once(stack: Stack) -> None:
    kind = stack.unique("race")
    seen: Counter[int] = Counter()

    async def handler(_context: JobContext, payload: dict[str, Any]) -> None:
        seen[payload["n"]] += 1
        await asyncio.sleep(0)

    ids = [await add(stack, kind, {"n": n}) for n in range(40)]
    app_state = stack.settings
    workers = [
        Worker(
            database=stack.database,
            settings=app_state,
            kek=None,  # type: ignore[arg-type]
            blobs=None,  # type: ignore[arg-type]
            handlers={kind: handler},
        )
        for _ in range(2)
    ]
    tasks = [asyncio.create_task(w.run()) for w in workers]
    try:
        for _ in range(400):
            async with stack.database.sessionmaker() as session:
                states = set(await session.scalars(select(JobRow.state).where(JobRow.id.in_(ids))))
            if states == {"completed"}:
                break
            await asyncio.sleep(0.05)
    finally:
        for w in workers:
            await w.shutdown()
        await asyncio.gather(*tasks)
    assert states == {"completed"}
    assert seen == Counter(range(40))
