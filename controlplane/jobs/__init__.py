"""Durable background jobs in the database: enqueue in the caller's transaction, run by workers."""

from __future__ import annotations

from controlplane.jobs.dispatch import Jobs
from controlplane.jobs.engine import JobState, PermanentJobError, enqueue
from controlplane.jobs.worker import JobContext, JobHandler, Worker

__all__ = [
    "JobContext",
    "JobHandler",
    "JobState",
    "Jobs",
    "PermanentJobError",
    "Worker",
    "enqueue",
]
