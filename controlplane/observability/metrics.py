"""``/metrics``: Prometheus text exposition via prometheus-client.

Each process keeps its own registry (no shared multiprocess directory): scrape every control-plane
process and aggregate with ``sum by (...)``. Gauges derived from the database (agents by status,
deployments by status, jobs by state and queue lag) are read at scrape time, so every process
reports the same fleet-wide values for them.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, get
from litestar.datastructures import State
from litestar.enums import ScopeType
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy import func, select

from controlplane.db.models import AgentRow, DeploymentRow, JobRow
from controlplane.db.types import utcnow
from controlplane.errors import scope_request_id
from controlplane.observability.logs import REQUEST_ID

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from controlplane.settings import Settings

__all__ = ["Metrics", "MetricsMiddleware", "metrics_endpoint"]

access = logging.getLogger("byteor.controlplane.access")

JOB_STATES = ("queued", "running", "completed", "failed", "retrying", "dead_letter")
DEPLOYMENT_STATES = (
    "pending_approval",
    "approved",
    "denied",
    "building",
    "deploying",
    "active",
    "failed",
    "rolling_back",
    "rolled_back",
)


class Metrics:
    """Every metric of one control-plane process, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "byteor_http_requests",
            "HTTP requests by route template",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "byteor_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=r,
        )
        self.in_flight = Gauge(
            "byteor_http_requests_in_flight", "HTTP requests being served", registry=r
        )
        self.heartbeats = Counter(
            "byteor_heartbeats_received", "Agent heartbeats received", registry=r
        )
        self.heartbeats_fast_lane = Counter(
            "byteor_heartbeats_fast_lane",
            "Agent heartbeats served by the fast lane (the rest took the ordinary route)",
            registry=r,
        )
        self.enrollments = Counter(
            "byteor_enrollments", "Agent enrollments by outcome", ["outcome"], registry=r
        )
        self.rate_limited = Counter(
            "byteor_rate_limit_rejections",
            "Requests refused by a rate limit",
            ["bucket"],
            registry=r,
        )
        self.artifact_bytes = Counter(
            "byteor_artifact_bytes_ingested", "Artifact bytes accepted", registry=r
        )
        self.agents = Gauge("byteor_agents", "Agents by status", ["status"], registry=r)
        self.deployments = Gauge(
            "byteor_deployments", "Deployments by status", ["status"], registry=r
        )
        self.jobs = Gauge("byteor_jobs", "Durable jobs by state", ["state"], registry=r)
        self.job_lag = Gauge(
            "byteor_job_queue_lag_seconds", "Age of the oldest due job not yet claimed", registry=r
        )
        self._latency: dict[tuple[str, str], Histogram] = {}
        self._requests: dict[tuple[str, str, int], Counter] = {}

    def observe_request(self, method: str, route: str, status: int, elapsed: float) -> None:
        """Count and time one HTTP request (labelled children are kept: ``labels()`` locks)."""
        latency = self._latency.get((method, route))
        if latency is None:
            latency = self._latency[method, route] = self.latency.labels(method, route)
        latency.observe(elapsed)
        requests = self._requests.get((method, route, status))
        if requests is None:
            requests = self.requests.labels(method, route, str(status))
            self._requests[method, route, status] = requests
        requests.inc()

    async def refresh_from_database(self, state: State) -> None:
        """Set the database-derived gauges (called at scrape time)."""
        settings: Settings = state.settings
        now = utcnow()
        async with state.database.readers() as session:
            online_after = now - timedelta(seconds=settings.agent_stale_after_seconds)
            offline_before = now - timedelta(seconds=settings.agent_offline_after_seconds)
            total = await session.scalar(select(func.count()).select_from(AgentRow)) or 0
            online = (
                await session.scalar(
                    select(func.count())
                    .select_from(AgentRow)
                    .where(AgentRow.last_heartbeat_at >= online_after)
                )
                or 0
            )
            stale = (
                await session.scalar(
                    select(func.count())
                    .select_from(AgentRow)
                    .where(
                        AgentRow.last_heartbeat_at < online_after,
                        AgentRow.last_heartbeat_at >= offline_before,
                    )
                )
                or 0
            )
            self.agents.labels("online").set(online)
            self.agents.labels("stale").set(stale)
            self.agents.labels("offline").set(total - online - stale)
            deployments = dict(
                (
                    await session.execute(
                        select(DeploymentRow.status, func.count()).group_by(DeploymentRow.status)
                    )
                ).all()
            )
            for status in DEPLOYMENT_STATES:
                self.deployments.labels(status).set(deployments.get(status, 0))
            jobs = dict(
                (
                    await session.execute(select(JobRow.state, func.count()).group_by(JobRow.state))
                ).all()
            )
            for job_state in JOB_STATES:
                self.jobs.labels(job_state).set(jobs.get(job_state, 0))
            oldest = await session.scalar(
                select(func.min(JobRow.run_after)).where(
                    JobRow.state.in_(["queued", "retrying"]), JobRow.run_after <= now
                )
            )
            self.job_lag.set(max(0.0, (now - oldest).total_seconds()) if oldest else 0.0)


class MetricsMiddleware:
    """Per request: sets the request id for logs, counts and times it, writes one access line."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        metrics: Metrics = scope["app"].state.metrics
        route = str(scope.get("path_template") or "unmatched")
        method = str(scope.get("method", "GET"))
        status = [500]

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        token = REQUEST_ID.set(scope_request_id(scope))
        started = time.perf_counter()
        metrics.in_flight.inc()
        try:
            await self.app(scope, receive, observed)
        except Exception as exc:
            status[0] = int(getattr(exc, "status_code", 500))
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics.in_flight.dec()
            metrics.observe_request(method, route, status[0], elapsed)
            if access.isEnabledFor(logging.INFO):
                access.info(
                    "%s %s %d",
                    method,
                    route,
                    status[0],
                    extra={
                        "status": status[0],
                        "duration_ms": round(elapsed * 1000, 2),
                        "route": route,
                    },
                )
            REQUEST_ID.reset(token)


@get(
    "/metrics",
    opt={"exclude_from_auth": True},
    tags=["health"],
    summary="Prometheus metrics (text exposition format)",
    media_type=CONTENT_TYPE_LATEST,
)
async def metrics_endpoint(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    metrics: Metrics = state.metrics
    await metrics.refresh_from_database(state)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
