"""Enrolling many agents over HTTP, as hosts would (one enrollment token, many uses)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from benchmarks.harness import Tenant


@dataclass(frozen=True, slots=True)
class Enrolled:
    agent_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


async def enroll_many(tenant: Tenant, count: int, *, concurrency: int = 16) -> list[Enrolled]:
    """Enroll ``count`` agents with one multi-use enrollment token."""
    token = tenant.api(
        "POST", f"{tenant.env_path}/enrollment-tokens", json={"max_uses": max(count, 1)}
    )["token"]
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=tenant.cp.url, limits=limits, timeout=120) as client:

        async def one(i: int) -> Enrolled:
            async with gate:
                response = await client.post(
                    f"{tenant.env_path}/agents",
                    headers={"Authorization": f"Bearer {token}"},
                    json={"name": f"host-{i:05d}", "hostname": f"host-{i:05d}.bench"},
                )
            response.raise_for_status()
            body = response.json()
            return Enrolled(body["agent_id"], body["api_key"])

        return list(await asyncio.gather(*(one(i) for i in range(count))))
