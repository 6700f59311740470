"""Two ``byteor-controlplane serve`` processes on one PostgreSQL converge one fleet.

Late agents ask both processes for their deployment at the same moment, several times over; each
agent must be issued exactly one manifest for the desired bundle (one sequence, one attempt).
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from controlplane.db.models import AgentRow, DeploymentTargetRow
from controlplane.settings import DeploymentMode, Settings
from tests.backends import throwaway_database
from tests.conftest import GENEROUS_RATE_LIMITS, owner_of, running_stack
from tests.controlplane.agents.helpers import agent_headers
from tests.controlplane.delivery.world import World
from tests.controlplane.pipelines.plans import SINGLE_RING
from tests.e2e.conftest import clean_env, start_server

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]

LATE_AGENTS = 8
ROUNDS = 4


async def test_two_processes_issue_one_manifest_per_agent(tmp_path: Path) -> None:
    kek = base64.urlsafe_b64encode(os.urandom(32)).decode()
    async with throwaway_database("postgresql", tmp_path) as url:
        settings = Settings(
            data_dir=tmp_path / "setup",
            database_url=url,
            auto_migrate=True,
            deployment_mode=DeploymentMode.COMBINED,
            key_encryption_key=kek,
            heartbeat_flush_seconds=0.2,
            **GENEROUS_RATE_LIMITS,
        )
        async with running_stack(settings, "postgresql") as stack:
            tree = await stack.tree(await owner_of(stack, "fleet@example.com"))
            draft = await stack.ok(
                "POST",
                f"{tree.env_path}/drafts",
                tree.owner,
                json={"name": "d", "plan": SINGLE_RING},
            )
            version = await stack.ok(
                "POST", f"{tree.env_path}/drafts/{draft['id']}/version", tree.owner
            )
            world = World(stack=stack, tree=tree, version_id=version["id"], agents=[])
            await world.add_agent("first")
            v1 = (await world.deploy()).json()
            await world.activate_all(v1["id"])
            late = [await world.add_agent(f"late-{i}", online=False) for i in range(LATE_AGENTS)]

            servers = []
            try:
                for i in range(2):
                    cwd = tmp_path / f"server-{i}"
                    cwd.mkdir()
                    servers.append(
                        start_server(
                            cwd,
                            clean_env(
                                BYTEOR_CLOUD_DATABASE_URL=url,
                                BYTEOR_CLOUD_DATA_DIR=str(cwd / "data"),
                                BYTEOR_CLOUD_KEY_ENCRYPTION_KEY=kek,
                                BYTEOR_CLOUD_DEPLOYMENT_MODE="api",
                            ),
                        )
                    )

                async def check(server_url: str, agent: dict[str, Any]) -> int:
                    async with httpx.AsyncClient(base_url=server_url, timeout=30) as http:
                        response = await http.get(
                            f"/api/v1/agents/{agent['agent_id']}/deployment",
                            headers=agent_headers(agent),
                        )
                    assert response.status_code == 200, response.text
                    body: dict[str, Any] = response.json()
                    assert body["manifest"] is not None
                    return int(body["sequence"])

                sequences = await asyncio.gather(
                    *(
                        check(server.url, agent)
                        for _ in range(ROUNDS)
                        for server in servers
                        for agent in late
                    )
                )
            finally:
                for server in servers:
                    server.stop()
            assert set(sequences) == {1}
            async with stack.database.sessionmaker() as session:
                for agent in late:
                    issued = await session.scalar(
                        select(AgentRow.manifest_sequence).where(AgentRow.id == agent["agent_id"])
                    )
                    assert issued == 1
                    targets = list(
                        await session.scalars(
                            select(DeploymentTargetRow).where(
                                DeploymentTargetRow.agent_id == agent["agent_id"]
                            )
                        )
                    )
                    assert [(t.deployment_id, t.sequence, t.attempts) for t in targets] == [
                        (v1["id"], 1, 1)
                    ]
