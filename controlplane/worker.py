"""``byteor-controlplane worker``: run durable jobs without serving HTTP.

Any number of these (and of ``serve`` processes in ``combined`` mode) can share one PostgreSQL
database: jobs are claimed with ``FOR UPDATE SKIP LOCKED`` under a lease, so each runs once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

from controlplane.app import job_handlers
from controlplane.blobs import BlobStore
from controlplane.db import database_for
from controlplane.db.migrate import current_revision, head_revision
from controlplane.jobs import Worker
from controlplane.signing.kek import load_kek

if TYPE_CHECKING:
    from controlplane.settings import Settings

__all__ = ["run_worker"]

logger = logging.getLogger("byteor.controlplane.worker")


async def run_worker(settings: Settings) -> int:
    """Process jobs until SIGTERM/SIGINT; refuses to start on an unmigrated database."""
    database = database_for(settings)
    try:
        revision = await current_revision(database.engine)
        if revision != head_revision():
            logger.error(
                "database schema is at %s, code expects %s; run `byteor-controlplane migrate`",
                revision,
                head_revision(),
            )
            return 1
        worker = Worker(
            database=database,
            settings=settings,
            kek=load_kek(settings),
            blobs=BlobStore(settings.blob_dir),
            handlers=job_handlers(),
        )
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(worker.shutdown()))
        await worker.run()
        return 0
    finally:
        await database.dispose()
