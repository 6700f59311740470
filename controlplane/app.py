"""``create_app(settings)``: assembles the Litestar application. Nothing runs at import time."""

from __future__ import annotations

import asyncio
import functools
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from litestar import Litestar
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from controlplane.agents.fastlane import install as install_fast_lane
from controlplane.agents.fleetview import FleetView
from controlplane.agents.heartbeats import HeartbeatBuffer
from controlplane.agents.keycache import AgentKeyCache
from controlplane.agents.routes import (
    AgentAdminController,
    AgentRuntimeController,
    EnrollmentTokenController,
)
from controlplane.artifacts.ingest import ingest_artifact
from controlplane.artifacts.replays import REPLAY_JOB, run_replay
from controlplane.artifacts.routes import ArtifactController, upload_artifact
from controlplane.artifacts.upload import INGEST_JOB
from controlplane.auth.login_routes import LoginController
from controlplane.auth.middleware import AuthenticationMiddleware
from controlplane.auth.oidc import OidcClient
from controlplane.auth.routes import MeController, TokenController
from controlplane.blobs import BlobStore
from controlplane.bundles.routes import ConfigBundleController
from controlplane.bundles.service import BUILD_JOB, build_bundle
from controlplane.db import database_for
from controlplane.db.migrate import head_revision, upgrade
from controlplane.delivery.agent_routes import AgentDeliveryController
from controlplane.delivery.convergence import delivery_state, read_waiting_manifests
from controlplane.delivery.deadlines import (
    LEGACY_EXPIRY_JOB,
    enforce_deadline,
    expire_legacy_approvals,
    reconcile_environment,
)
from controlplane.delivery.grants import BundleGrants
from controlplane.delivery.lifecycle import DEADLINE_JOB
from controlplane.delivery.reports import ReportBatcher
from controlplane.delivery.rollout import ROLLOUT_JOB, Delivery, run_rollout
from controlplane.delivery.routes import ApprovalController, DeploymentController
from controlplane.delivery.signals import AgentSignals
from controlplane.deps import dependencies
from controlplane.environments.routes import EnvironmentController
from controlplane.errors import exception_handlers, scope_request_id
from controlplane.health.routes import healthz, readyz
from controlplane.jobs import JobHandler, Worker
from controlplane.jobs.kinds import RECONCILE_ENVIRONMENT
from controlplane.observability import Metrics, MetricsMiddleware, metrics_endpoint
from controlplane.openapi import document_errors
from controlplane.orgs.routes import (
    MemberController,
    OrganizationController,
    ServiceAccountController,
)
from controlplane.pipelines.routes import DraftController, VersionController
from controlplane.projects.routes import ProjectController
from controlplane.ratelimit import AddressThrottleMiddleware, CredentialLimitMiddleware, RateLimiter
from controlplane.request import ByteorRequest
from controlplane.settings import DeploymentMode, Settings
from controlplane.signing.kek import load_kek
from controlplane.signing.routes import SigningKeyController
from shared import __version__

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from litestar.types import Message, Scope

__all__ = ["create_app"]

logger = logging.getLogger("byteor.controlplane")


def job_handlers() -> dict[str, JobHandler]:
    """Every kind of durable job this control plane runs, by name."""
    return {
        BUILD_JOB: build_bundle,
        ROLLOUT_JOB: run_rollout,
        DEADLINE_JOB: enforce_deadline,
        LEGACY_EXPIRY_JOB: expire_legacy_approvals,
        RECONCILE_ENVIRONMENT: reconcile_environment,
        INGEST_JOB: ingest_artifact,
        REPLAY_JOB: run_replay,
    }


def _lifespan(settings: Settings) -> Any:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        database = database_for(settings)
        app.state.database = database
        app.state.schema_head = head_revision()
        app.state.draining = False
        app.state.kek = load_kek(settings)
        limiter = RateLimiter.from_settings(settings)
        limiter.on_reject = lambda bucket: app.state.metrics.rate_limited.labels(bucket).inc()
        app.state.rate_limiter = limiter
        app.state.blobs = BlobStore(settings.blob_dir)
        oidc = OidcClient.from_settings(settings) if settings.oidc_enabled else None
        app.state.oidc = oidc
        if settings.should_auto_migrate:
            await upgrade(database.engine)
            logger.info("database schema is at %s", app.state.schema_head)
        heartbeats = HeartbeatBuffer(database, settings.heartbeat_flush_seconds)
        app.state.heartbeats = heartbeats
        # The agents domain asks delivery which agents a manifest waits for, without importing it.
        fleet = FleetView(database, settings.fleet_view_ttl_seconds, delivery_state)
        app.state.fleet = fleet
        signals = AgentSignals(
            fleet,
            interval=settings.fleet_view_ttl_seconds,
            manifests=functools.partial(read_waiting_manifests, database),
        )
        app.state.agent_signals = signals
        app.state.bundle_grants = BundleGrants()
        agent_keys = AgentKeyCache(
            database, settings.agent_key_cache_seconds, settings.agent_key_cache_size
        )
        app.state.agent_keys = agent_keys
        reports = ReportBatcher(database, lambda: Delivery.of_app(app.state))
        app.state.reports = reports
        worker: Worker | None = None
        worker_task: asyncio.Task[None] | None = None
        if settings.deployment_mode in (DeploymentMode.WORKER, DeploymentMode.COMBINED):
            worker = Worker(
                database=database,
                settings=settings,
                kek=app.state.kek,
                blobs=app.state.blobs,
                handlers=job_handlers(),
                signals=signals,
                heartbeats=heartbeats,
            )
            worker_task = asyncio.create_task(worker.run(), name="byteor-job-worker")
        app.state.worker = worker
        heartbeat_task = asyncio.create_task(heartbeats.run(), name="byteor-heartbeat-flush")
        keys_task = asyncio.create_task(agent_keys.run(), name="byteor-agent-key-cache")
        try:
            yield
        finally:
            await signals.shutdown()
            await reports.shutdown()
            await agent_keys.shutdown()
            await keys_task
            await heartbeats.shutdown()
            await heartbeat_task
            if worker is not None and worker_task is not None:
                await worker.shutdown()
                await worker_task
            if oidc is not None:
                await oidc.aclose()
            await database.dispose()

    return lifespan


async def _send_request_id(message: Message, scope: Scope) -> None:
    """Echo the request id on every response, errors and unrouted paths included."""
    if message["type"] != "http.response.start":
        return
    headers = message.get("headers") or []
    if not any(name.lower() == b"x-request-id" for name, _ in headers):
        message["headers"] = [*headers, (b"x-request-id", scope_request_id(scope).encode())]


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the control-plane application for ``settings`` (default: from the environment)."""
    settings = settings or Settings()
    openapi = OpenAPIConfig(
        title="ByteOr Cloud API",
        version=__version__,
        description=(
            "The ByteOr control plane. Errors are RFC 9457 application/problem+json. "
            "Authenticate with `Authorization: Bearer <token>`."
        ),
        path="/schema",
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="byteor_pat_... API token or byteor_ses_... login session",
                ),
                "enrollment": SecurityScheme(
                    type="http", scheme="bearer", description="byteor_enr_... enrollment token"
                ),
                "agent_key": SecurityScheme(
                    type="http", scheme="bearer", description="byteor_agk_... agent runtime key"
                ),
                "session_cookie": SecurityScheme(
                    type="apiKey",
                    name="byteor_session",
                    security_scheme_in="cookie",
                    description=(
                        "byteor_ses_... session set by /auth/callback; changes need a "
                        "same-origin Origin header"
                    ),
                ),
            }
        ),
        security=[{"bearer": []}],
    )
    auth = DefineMiddleware(AuthenticationMiddleware, exclude=["^/schema"])
    app = Litestar(
        route_handlers=[
            healthz,
            readyz,
            metrics_endpoint,
            LoginController,
            MeController,
            TokenController,
            OrganizationController,
            MemberController,
            ServiceAccountController,
            ProjectController,
            EnvironmentController,
            DraftController,
            VersionController,
            ConfigBundleController,
            SigningKeyController,
            EnrollmentTokenController,
            AgentAdminController,
            AgentRuntimeController,
            AgentDeliveryController,
            DeploymentController,
            ApprovalController,
            ArtifactController,
            upload_artifact,
        ],
        dependencies={
            **dependencies,
            "delivery": Provide(Delivery.of_app, sync_to_thread=False),
        },
        middleware=[
            MetricsMiddleware,
            AddressThrottleMiddleware,
            auth,
            CredentialLimitMiddleware,
        ],
        exception_handlers=exception_handlers,
        lifespan=[_lifespan(settings)],
        openapi_config=openapi,
        request_max_body_size=settings.max_request_body_bytes,
        before_send=[_send_request_id],
        request_class=ByteorRequest,
        logging_config=None,
        debug=False,
    )
    app.state.settings = settings
    app.state.oidc = None
    app.state.metrics = Metrics()
    document_errors(app)
    install_fast_lane(app)
    return app
