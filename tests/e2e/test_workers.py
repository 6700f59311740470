"""Two ``byteor-controlplane worker`` processes racing on one PostgreSQL job queue."""

from __future__ import annotations

import asyncio
import base64
import os
import re
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import select

from controlplane.db.models import ConfigBundleRow, JobRow
from controlplane.settings import DeploymentMode, Settings
from tests.backends import throwaway_database
from tests.conftest import owner_of, running_stack
from tests.controlplane.pipelines.plans import SINGLE_RING
from tests.e2e.conftest import clean_env, console_script

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

JOBS = 30


async def test_every_job_runs_exactly_once(tmp_path: Path) -> None:
    kek = base64.urlsafe_b64encode(os.urandom(32)).decode()
    async with throwaway_database("postgresql", tmp_path) as url:
        settings = Settings(
            data_dir=tmp_path,
            database_url=url,
            auto_migrate=True,
            deployment_mode=DeploymentMode.API,  # this process only enqueues
            key_encryption_key=kek,
        )
        async with running_stack(settings, "postgresql") as stack:
            tree = await stack.tree(await owner_of(stack, "race@example.com"))
            draft = await stack.ok(
                "POST",
                f"{tree.env_path}/drafts",
                tree.owner,
                json={"name": "d", "plan": SINGLE_RING},
            )
            version = await stack.ok(
                "POST", f"{tree.env_path}/drafts/{draft['id']}/version", tree.owner
            )
            for _ in range(JOBS):
                await stack.ok(
                    "POST",
                    f"{tree.env_path}/config-bundles",
                    tree.owner,
                    json={"pipeline_version_id": version["id"]},
                )

            env = clean_env(
                BYTEOR_CLOUD_DATABASE_URL=url,
                BYTEOR_CLOUD_DATA_DIR=str(tmp_path),
                BYTEOR_CLOUD_KEY_ENCRYPTION_KEY=kek,
                BYTEOR_CLOUD_JOB_POLL_INTERVAL_SECONDS="0.05",
            )
            logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
            workers = []
            for log in logs:
                with log.open("wb") as out:
                    workers.append(
                        subprocess.Popen(
                            [console_script("byteor-controlplane"), "worker"],
                            env=env,
                            stdout=out,
                            stderr=subprocess.STDOUT,
                        )
                    )
            try:
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    async with stack.database.sessionmaker() as session:
                        states = Counter(await session.scalars(select(JobRow.state)))
                    if states == Counter({"completed": JOBS}):
                        break
                    await asyncio.sleep(0.2)
                # A worker still starting up when the other finished everything has not installed
                # its SIGTERM handler yet: wait until both run, then stop them.
                for log in logs:
                    while time.monotonic() < deadline:
                        if "job worker" in log.read_text(errors="replace"):
                            break
                        await asyncio.sleep(0.1)
            finally:
                for process in workers:
                    process.send_signal(signal.SIGTERM)
                codes = [process.wait(timeout=30) for process in workers]

            assert states == Counter({"completed": JOBS}), states
            assert codes == [0, 0], [log.read_text() for log in logs]
            async with stack.database.sessionmaker() as session:
                attempts = list(await session.scalars(select(JobRow.attempts)))
                bundles = Counter(await session.scalars(select(ConfigBundleRow.status)))
            assert attempts == [1] * JOBS
            assert bundles == Counter({"ready": JOBS})
            done = [
                re.findall(r"job (job_\w+) \(bundle\.build\) -> completed", log.read_text())
                for log in logs
            ]
            everything = done[0] + done[1]
            assert len(everything) == JOBS
            assert len(set(everything)) == JOBS
