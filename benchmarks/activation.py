"""(d) Activation latency: deployment manifest in hand to ``active`` reported, for a 1 MiB bundle.

A real control plane; the agent's real daemon (:class:`agent.daemon.Agent`, enrolled with a
token, heartbeating, long-polling) runs in this process so its own code path can be timed. Its
:class:`~agent.client.ControlPlaneClient` is subclassed only to take timestamps: when
``get_deployment`` returns a manifest (start) and when ``report_deployment`` of ``active`` has been
acknowledged (end). In between the agent does what it always does: verify the manifest, report
``activating``, download the bundle, check its digest, unpack, validate, switch ``current`` and the
spec file, commit its state and report ``active``. No health check and no activation command.

The bundle is 1 MiB because the environment's runtime config carries incompressible padding
(random base64), which the control plane bakes into ``runtime_config.json`` of every bundle;
every run is a new pipeline version (draft, version, deployment; the environment needs no
approval), so every bundle is new to the agent and really downloaded and unpacked. The agent's
step journal (``byteor.agent.activation`` debug records) gives a per-step breakdown. One warm-up
deployment is not counted.

Baseline, in the same run: reading a 1 MiB file and hashing it with SHA-256.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import logging
import operator
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from agent.client import ControlPlaneClient
from agent.daemon import Agent
from agent.settings import AgentSettings
from benchmarks.footprint import stop_server
from benchmarks.harness import PLAN, bootstrap, control_plane
from controlplane.bundles.archive import build_bundle_archive

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.config import AgentConfig
    from shared.deployments import AgentDeployment, DeploymentReport

MIB = 1024 * 1024
BUNDLE_BYTES = MIB
TARGET_MEDIAN_MS = 150.0
STEPS = (
    "verified",
    "downloaded",
    "unpacked",
    "validated",
    "health_checked",
    "switched",
    "activated",
)


def _padding(target: int) -> dict[str, Any]:
    """A runtime config whose bundle archive is about ``target`` bytes (random base64 text)."""
    spec = "pipeline.version=1\npipeline.name=bench00\n" + "x=y\n" * 40

    def archive_size(chars: int) -> int:
        text = base64.b64encode(os.urandom(chars * 3 // 4 + 3)).decode()[:chars]
        return len(
            build_bundle_archive(
                org_id="org_" + "0" * 26,
                environment_id="env_" + "0" * 26,
                pipeline_version_id="plv_" + "0" * 26,
                spec_kv=spec,
                spec_hash="sha256:" + "0" * 64,
                tuning_profile="default",
                runtime_config={"bench_padding": text},
            )
        )

    chars = target * 4 // 3
    for _ in range(3):  # gzip of base64 is close to linear in its length
        chars = int(chars * target / archive_size(chars))
    return {"bench_padding": base64.b64encode(os.urandom(chars * 3 // 4 + 3)).decode()[:chars]}


class TimedClient(ControlPlaneClient):
    """The agent's client, noting when a manifest arrives and when ``active`` is acknowledged."""

    def __init__(self, settings: AgentConfig) -> None:
        super().__init__(settings)
        self.received: dict[str, float] = {}
        self.bundle_sizes: dict[str, int] = {}
        self.reported: dict[str, tuple[float, str]] = {}
        self.changed = asyncio.Event()

    async def get_deployment(
        self, wait: float = 0, etag: str | None = None
    ) -> tuple[AgentDeployment | None, str | None]:
        deployment, new_etag = await super().get_deployment(wait, etag)
        now = time.perf_counter()
        if deployment is not None and deployment.manifest is not None:
            payload = deployment.manifest.payload
            if isinstance(payload, dict) and isinstance(payload.get("deployment_id"), str):
                self.received.setdefault(payload["deployment_id"], now)
                self.bundle_sizes[payload["deployment_id"]] = int(payload.get("bundle_size", 0))
        return deployment, new_etag

    async def report_deployment(self, report: DeploymentReport) -> None:
        await super().report_deployment(report)
        if report.status != "activating":
            self.reported[report.deployment_id] = (time.perf_counter(), report.status)
            self.changed.set()


class StepLog(logging.Handler):
    """Collects the activator's journal steps: ``deployment <id>: <step>`` debug records."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.steps: dict[str, dict[str, float]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        now = time.perf_counter()
        args = record.args
        if record.msg == "deployment %s: %s" and isinstance(args, tuple) and len(args) == 2:
            self.steps.setdefault(str(args[0]), {})[str(args[1])] = now


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def _baseline(path: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        hashlib.sha256(path.read_bytes()).hexdigest()
        times.append(time.perf_counter() - started)
    return times


async def _measure(quick: bool, workdir: Path) -> dict[str, Any]:
    runs = 5 if quick else 50
    extra = {
        "BYTEOR_CLOUD_AGENT_HEARTBEAT_INTERVAL_SECONDS": "1",
        "BYTEOR_CLOUD_HEARTBEAT_FLUSH_SECONDS": "0.3",
        "BYTEOR_CLOUD_JOB_POLL_INTERVAL_SECONDS": "0.05",
        "BYTEOR_CLOUD_DRAIN_SECONDS": "0",
    }
    step_log = StepLog()
    activation_logger = logging.getLogger("byteor.agent.activation")
    old_level = activation_logger.level
    activation_logger.setLevel(logging.DEBUG)
    activation_logger.addHandler(step_log)
    latencies: list[float] = []
    per_run: list[dict[str, float]] = []
    sizes: list[int] = []
    try:
        with control_plane(workdir / "cp", extra=extra) as cp:
            try:
                tenant = bootstrap(cp, runtime_config=_padding(BUNDLE_BYTES))
                token = tenant.api(
                    "POST", f"{tenant.env_path}/enrollment-tokens", json={"max_uses": 1}
                )["token"]
                settings = AgentSettings(
                    api_base_url=cp.url,
                    enrollment_token=token,
                    org_id=tenant.org_id,
                    project_id=tenant.project_id,
                    environment_id=tenant.env_id,
                    agent_name="activation",
                    state_dir=workdir / "agent-state",
                    spec=workdir / "etc" / "spec.kv",
                    heartbeat_interval_seconds=1,
                    deployment_wait_seconds=5,
                ).config()
                client = TimedClient(settings)
                agent = Agent(settings, client)
                daemon = asyncio.create_task(agent.run())
                async with httpx.AsyncClient(
                    base_url=cp.url + tenant.env_path, headers=tenant.headers, timeout=60
                ) as api:
                    try:
                        await _until(lambda: bool(agent.status.last_heartbeat_ok), daemon, 60)
                        for i in range(runs + 1):
                            deployment_id = await _deploy(api, i)
                            reported = functools.partial(
                                operator.contains, client.reported, deployment_id
                            )
                            await _until(reported, daemon, 60)
                            done, status = client.reported[deployment_id]
                            if status != "active":
                                raise RuntimeError(f"deployment {deployment_id} ended {status}")
                            await _settled(api, deployment_id)
                            if i == 0:
                                continue  # warm-up
                            received = client.received[deployment_id]
                            latencies.append(done - received)
                            sizes.append(client.bundle_sizes[deployment_id])
                            marks = step_log.steps.get(deployment_id, {})
                            previous, row = received, {}
                            for step in STEPS:
                                if step in marks:
                                    row[step] = marks[step] - previous
                                    previous = marks[step]
                            row["committed_and_reported"] = done - previous
                            per_run.append(row)
                    finally:
                        await agent.shutdown()
                        await asyncio.wait_for(daemon, 30)
                        await client.aclose()
            finally:
                stop_server(cp)
    finally:
        activation_logger.removeHandler(step_log)
        activation_logger.setLevel(old_level)

    sample = workdir / "sample.bin"
    sample.write_bytes(os.urandom(BUNDLE_BYTES))
    baseline = _baseline(sample, max(runs, 20))
    median = statistics.median(latencies)
    base_median = statistics.median(baseline)
    breakdown = {
        name: _ms(statistics.median(row.get(name, 0.0) for row in per_run))
        for name in (*STEPS, "committed_and_reported")
    }
    return {
        "runs": runs,
        "bundle_bytes": round(statistics.median(sizes)),
        "bundle_mib": round(statistics.median(sizes) / MIB, 3),
        "median_ms": _ms(median),
        "p99_ms": _ms(_p99(latencies)),
        "min_ms": _ms(min(latencies)),
        "max_ms": _ms(max(latencies)),
        "median_breakdown_ms": breakdown,
        "breakdown_note": (
            "verified = from manifest in hand: verify, report activating, verify again; "
            "downloaded includes the digest check"
        ),
        "baseline_read_sha256_median_ms": _ms(base_median),
        "ratio": round(median / base_median, 1) if base_median else None,
        "target_median_ms": TARGET_MEDIAN_MS,
        "ok": median * 1000 <= TARGET_MEDIAN_MS,
    }


async def _until(predicate: Callable[[], bool], daemon: asyncio.Task[None], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if daemon.done():
            daemon.result()
            raise RuntimeError("the agent stopped")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {seconds} s")
        await asyncio.sleep(0.01)


async def _call(api: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    response = await api.request(method, path, **kwargs)
    if response.status_code >= 300:
        raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
    return response.json()


async def _deploy(api: httpx.AsyncClient, i: int) -> str:
    draft = await _call(
        api, "POST", "/drafts", json={"name": f"d{i}", "plan": PLAN | {"name": f"bench{i:02d}"}}
    )
    version = await _call(api, "POST", f"/drafts/{draft['id']}/version")
    deployment = await _call(
        api, "POST", "/deployments", json={"pipeline_version_id": version["id"]}
    )
    return str(deployment["id"])


async def _settled(api: httpx.AsyncClient, deployment_id: str) -> None:
    """Wait until the control plane has the deployment ``active`` (the next one may start)."""
    deadline = time.monotonic() + 30
    while True:
        detail = await _call(api, "GET", f"/deployments/{deployment_id}")
        if detail["status"] == "active":
            return
        if detail["status"] in ("failed", "rolled_back", "cancelled", "denied"):
            raise RuntimeError(f"deployment {deployment_id} is {detail['status']}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"deployment {deployment_id} still {detail['status']}")
        await asyncio.sleep(0.05)


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline row: manifest received to ``active`` reported, for a 1 MiB bundle."""
    return [
        {
            "measure": (
                f"activation of a {result['bundle_mib']} MiB bundle, median of {result['runs']} "
                f"(p99 {result['p99_ms']} ms)"
            ),
            "value": f"{result['median_ms']} ms",
            "baseline": f"{result['baseline_read_sha256_median_ms']} ms (read + sha256)",
            "ratio": result["ratio"],
            "target": f"median <= {result['target_median_ms']} ms",
            "ok": result["ok"],
        }
    ]


def run(quick: bool) -> dict[str, Any]:
    keep = os.environ.get("BENCH_KEEP_DIR")
    if keep:
        return asyncio.run(_measure(quick, Path(keep)))
    with tempfile.TemporaryDirectory(prefix="byteor-bench-act-") as tmp:
        return asyncio.run(_measure(quick, Path(tmp)))


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=2))
