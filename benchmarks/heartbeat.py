"""(a) Heartbeat ingestion against the same server's ``/healthz``, same load generator."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import httpx

from benchmarks.agents import Enrolled, enroll_many
from benchmarks.harness import bootstrap, control_plane
from benchmarks.load import LoadResult, request_bytes, run_load

TARGET_RATIO = 0.7
ROUNDS = 5
ROUNDS_QUICK = 2


def _row(name: str, result: LoadResult) -> dict[str, Any]:
    return {
        "route": name,
        "requests": result.requests,
        "errors": result.errors,
        "rps": round(result.rps, 1),
        "p50_ms": round(result.p50_ms, 2),
        "p99_ms": round(result.p99_ms, 2),
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
    }


async def warm(url: str, agents: list[Enrolled], concurrency: int = 16) -> None:
    """One heartbeat from every agent."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:

        async def one(agent: Enrolled) -> None:
            async with gate:
                response = await client.post(
                    f"/api/v1/agents/{agent.agent_id}/heartbeat",
                    headers=agent.headers,
                    json={"sequence": 0},
                )
            response.raise_for_status()

        await asyncio.gather(*(one(agent) for agent in agents))


async def _measure(quick: bool, workdir: Path) -> dict[str, Any]:
    connections = 8 if quick else 32
    duration = 1.0 if quick else 4.0
    # Many agents, each beating a few times a second at most: the rate limiter's moving window
    # per key then holds about as many entries as with the default budget (120/minute), as in
    # a real fleet, rather than the tens of thousands one hammering key would pile up.
    fleet = 64 if quick else 2_000
    with control_plane(workdir / "cp") as cp:
        tenant = bootstrap(cp)
        agents = await enroll_many(tenant, fleet)
        host = f"127.0.0.1:{cp.port}"
        healthz = request_bytes("GET", "/healthz", host=host)

        def pick(i: int) -> Enrolled:
            connection, n = divmod(i, 1_000_000)
            return agents[(connection + n * connections) % len(agents)]

        def heartbeat(i: int) -> bytes:
            agent = pick(i)
            body = json.dumps(
                {"sequence": i % 1_000_000 + 1, "agent_version": "bench", "uptime_seconds": 1.0}
            ).encode()
            return request_bytes(
                "POST",
                f"/api/v1/agents/{agent.agent_id}/heartbeat",
                host=host,
                headers={**agent.headers, "Content-Type": "application/json"},
                body=body,
            )

        def own_record(i: int) -> bytes:
            agent = pick(i)
            return request_bytes(
                "GET", f"/api/v1/agents/{agent.agent_id}", host=host, headers=agent.headers
            )

        # Steady state, as in a running fleet: every agent has beaten once (its key is in the
        # server's cache) before anything is measured.
        await warm(cp.url, agents)
        # Rounds alternate the routes, so a slower stretch of a shared machine weighs on each
        # of them alike; each route's figure is its median round, the ratio the median of the
        # rounds' own ratios (each against the /healthz measured just before it).
        rounds: dict[str, list[LoadResult]] = {"healthz": [], "heartbeat": [], "record": []}
        for _ in range(ROUNDS_QUICK if quick else ROUNDS):
            for name, make in (
                ("healthz", lambda _i: healthz),
                ("heartbeat", heartbeat),
                ("record", own_record),
            ):
                rounds[name].append(
                    await run_load(
                        cp.port, make, connections=connections, duration=duration, warmup=0.5
                    )
                )
    base = _median(rounds["healthz"])
    beats = _median(rounds["heartbeat"])
    record = _median(rounds["record"])
    ratio = statistics.median(
        b.rps / h.rps if h.rps else 0.0
        for h, b in zip(rounds["healthz"], rounds["heartbeat"], strict=True)
    )
    record_ratio = statistics.median(
        r.rps / h.rps if h.rps else 0.0
        for h, r in zip(rounds["healthz"], rounds["record"], strict=True)
    )
    errors = sum(r.errors for name in ("heartbeat", "record") for r in rounds[name])
    return {
        "connections": connections,
        "agents": len(agents),
        "seconds_per_round": duration,
        "rounds": len(rounds["healthz"]),
        "rows": [
            _row("GET /healthz (baseline)", base),
            _row("POST /api/v1/agents/{id}/heartbeat", beats),
            _row("GET /api/v1/agents/{id}", record),
        ],
        "per_round_rps": {
            name: [round(r.rps, 1) for r in results] for name, results in rounds.items()
        },
        "heartbeat_ratio": round(ratio, 3),
        "own_record_ratio": round(record_ratio, 3),
        "target_ratio": TARGET_RATIO,
        "ok": ratio >= TARGET_RATIO and errors == 0,
        "errors": errors,
    }


def _median(results: list[LoadResult]) -> LoadResult:
    """The round with the median request rate."""
    return sorted(results, key=lambda r: r.rps)[len(results) // 2]


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline rows: each agent route against ``/healthz`` in the same run."""
    rows = {row["route"]: row for row in result["rows"]}
    base = rows["GET /healthz (baseline)"]["rps"]
    out = []
    for route, ratio_key, target in (
        ("POST /api/v1/agents/{id}/heartbeat", "heartbeat_ratio", TARGET_RATIO),
        ("GET /api/v1/agents/{id}", "own_record_ratio", None),
    ):
        row = rows[route]
        out.append(
            {
                "measure": f"{route} req/s (p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms)",
                "value": row["rps"],
                "baseline": f"{base:,.0f} (/healthz)",
                "ratio": result[ratio_key],
                "target": f">= {target}x" if target else None,
                "ok": (result[ratio_key] >= target and row["errors"] == 0) if target else None,
            }
        )
    return out


def run(quick: bool) -> dict[str, Any]:
    keep = os.environ.get("BENCH_KEEP_DIR")
    if keep:
        return asyncio.run(_measure(quick, Path(keep)))
    with tempfile.TemporaryDirectory(prefix="byteor-bench-hb-") as tmp:
        return asyncio.run(_measure(quick, Path(tmp)))


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=2))
