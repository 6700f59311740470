from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Stack, Tree
from tests.controlplane.agents.helpers import agent_headers, enrolled_agent

pytestmark = pytest.mark.anyio

PROMTOOL = shutil.which("promtool")


async def scrape(stack: Stack) -> str:
    response = await stack.call("GET", "/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return response.text


def value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{sample} not in the exposition")


async def test_metrics_cover_requests_agents_jobs_and_deployments(stack: Stack, tree: Tree) -> None:
    before = await scrape(stack)
    agent = await enrolled_agent(stack, tree)
    await stack.call(
        "POST",
        f"/api/v1/agents/{agent['agent_id']}/heartbeat",
        headers=agent_headers(agent),
        json={"sequence": 1},
    )
    await stack.app.state.heartbeats.flush()
    await stack.call("GET", "/api/v1/orgs")  # a 401
    text = await scrape(stack)

    route = "/api/v1/orgs/{org_id}/projects/{project_id}/environments/{env_id}/agents"
    assert f'byteor_http_requests_total{{method="POST",route="{route}",status="201"}}' in text
    assert 'byteor_http_requests_total{method="GET",route="/api/v1/orgs",status="401"}' in text
    assert "byteor_http_request_duration_seconds_bucket" in text
    assert (
        value(text, "byteor_heartbeats_received_total")
        >= value(before, "byteor_heartbeats_received_total") + 1
    )
    assert value(text, 'byteor_enrollments_total{outcome="enrolled"}') >= 1
    assert value(text, 'byteor_agents{status="online"}') >= 1
    for metric in (
        'byteor_deployments{status="active"}',
        'byteor_jobs{state="completed"}',
        "byteor_job_queue_lag_seconds",
        "byteor_http_requests_in_flight",
        "byteor_artifact_bytes_ingested_total",
    ):
        value(text, metric)
    assert "byteor_rate_limit_rejections" in text


@pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (.ci/run installs prometheus)"
)
async def test_exposition_passes_promtool(stack: Stack, tree: Tree, tmp_path: Path) -> None:
    await enrolled_agent(stack, tree)
    text = await scrape(stack)
    result = subprocess.run(
        [str(PROMTOOL), "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


async def test_metrics_and_probes_need_no_credentials(stack: Stack) -> None:
    for path in ("/metrics", "/healthz", "/readyz"):
        assert (await stack.call("GET", path)).status_code == 200
