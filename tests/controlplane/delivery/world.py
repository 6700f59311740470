"""A deployable environment: a promoted version and enrolled agents, driven over the API."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import msgspec
from sqlalchemy import update

from controlplane.db.models import ApprovalRow, DeploymentRow, JobRow
from controlplane.db.types import utcnow
from shared.deployments import ManifestPayload
from shared.signing import Envelope, decode_keyset, verify_envelope
from tests.conftest import Actor, Stack, Tree
from tests.controlplane.agents.helpers import agent_headers, enrolled_agent
from tests.controlplane.pipelines.plans import SINGLE_RING


@dataclass
class World:
    stack: Stack
    tree: Tree
    version_id: str
    agents: list[dict[str, Any]]
    _sequence: int = 0

    async def heartbeat(
        self, agent: dict[str, Any], digest: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        """A heartbeat from ``agent`` (it is ``online`` from now on), saying it runs ``digest``."""
        self._sequence += 1
        body: dict[str, Any] = await self.stack.ok(
            "POST",
            f"/api/v1/agents/{agent['agent_id']}/heartbeat",
            headers=agent_headers(agent),
            json={"sequence": self._sequence, "active_bundle_digest": digest} | extra,
        )
        return body

    async def add_agent(self, name: str, *, online: bool = True) -> dict[str, Any]:
        agent = await enrolled_agent(self.stack, self.tree, name=name)
        self.agents.append(agent)
        if online:
            await self.heartbeat(agent)
        return agent

    async def deploy(self, actor: Actor | None = None, **body: Any) -> Any:
        payload = {"pipeline_version_id": self.version_id} | body
        return await self.stack.call(
            "POST", f"{self.tree.env_path}/deployments", actor or self.tree.owner, json=payload
        )

    async def detail(self, deployment_id: str) -> dict[str, Any]:
        body: dict[str, Any] = await self.stack.ok(
            "GET", f"{self.tree.env_path}/deployments/{deployment_id}", self.tree.owner
        )
        return body

    async def wait_status(
        self, deployment_id: str, *statuses: str, within: float = 20
    ) -> dict[str, Any]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            detail = await self.detail(deployment_id)
            if detail["status"] in statuses:
                return detail
            self.stack.app.state.worker.notify()
            await asyncio.sleep(0.05)
        raise AssertionError(f"deployment never reached {statuses}: {detail}")

    async def manifest(self, agent: dict[str, Any]) -> ManifestPayload:
        body = await self.stack.ok(
            "GET", f"/api/v1/agents/{agent['agent_id']}/deployment", headers=agent_headers(agent)
        )
        keys = await self.stack.ok("GET", f"{self.tree.org_path}/signing-keys", self.tree.owner)
        keyset = decode_keyset(msgspec.convert(keys["keyset"], Envelope))
        payload = verify_envelope(
            msgspec.convert(body["manifest"], Envelope),
            keyset,
            now=int(time.time()),
            expected_environment_id=self.tree.env_id,
        )
        return msgspec.convert(payload, ManifestPayload)

    async def report(
        self,
        agent: dict[str, Any],
        manifest: ManifestPayload,
        status: str,
        reason: str | None = None,
    ) -> Any:
        return await self.stack.call(
            "POST",
            f"/api/v1/agents/{agent['agent_id']}/deployment",
            headers=agent_headers(agent),
            json={
                "deployment_id": manifest.deployment_id,
                "sequence": manifest.sequence,
                "status": status,
                "reason": reason,
            },
        )

    async def activate_all(self, deployment_id: str) -> None:
        await self.wait_status(deployment_id, "deploying")
        for agent in self.agents:
            manifest = await self.manifest(agent)
            assert manifest.deployment_id == deployment_id
            assert (await self.report(agent, manifest, "activating")).status_code == 204
            assert (await self.report(agent, manifest, "active")).status_code == 204
            await self.heartbeat(agent, manifest.bundle_digest)
        await self.wait_status(deployment_id, "active")

    async def pass_deadline(self, deployment_id: str) -> None:
        """Let the deployment's current deadline pass now, and run the jobs due then."""
        past = utcnow() - timedelta(seconds=1)
        async with self.stack.database.sessionmaker() as session:
            await session.execute(
                update(DeploymentRow)
                .where(DeploymentRow.id == deployment_id)
                .values(deadline_at=past)
            )
            await session.execute(
                update(ApprovalRow)
                .where(ApprovalRow.deployment_id == deployment_id)
                .values(expires_at=past)
            )
            await session.commit()
        await self.run_delayed_jobs()

    async def run_delayed_jobs(self) -> None:
        async with self.stack.database.sessionmaker() as session:
            await session.execute(
                update(JobRow).where(JobRow.state == "queued").values(run_after=utcnow())
            )
            await session.commit()
        self.stack.app.state.worker.notify()


async def make_world(stack: Stack, agents: int = 2, **env_settings: Any) -> World:
    tree = await stack.tree()
    if env_settings:
        await stack.ok("PUT", tree.env_path, tree.owner, json=env_settings)
    draft = await stack.ok(
        "POST", f"{tree.env_path}/drafts", tree.owner, json={"name": "orders", "plan": SINGLE_RING}
    )
    version = await stack.ok("POST", f"{tree.env_path}/drafts/{draft['id']}/version", tree.owner)
    world = World(stack=stack, tree=tree, version_id=version["id"], agents=[])
    for i in range(agents):
        await world.add_agent(f"node-{i}")
    return world
