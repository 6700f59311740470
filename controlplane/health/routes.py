"""``/healthz`` (process alive) and ``/readyz`` (database reachable, schema current, not draining)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response, get
from litestar.datastructures import State
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from controlplane.db.migrate import current_revision
from controlplane.errors import problem_response

__all__ = ["healthz", "readyz"]

logger = logging.getLogger("byteor.controlplane.health")


class HealthStatus(msgspec.Struct, kw_only=True, omit_defaults=True):
    status: str
    database: str | None = None
    schema_revision: str | None = None


@get("/healthz", opt={"exclude_from_auth": True}, tags=["health"], summary="Liveness probe")
async def healthz() -> HealthStatus:
    return HealthStatus(status="ok")


@get(
    "/readyz",
    opt={"exclude_from_auth": True},
    tags=["health"],
    summary="Readiness probe: 200 when the database answers and migrations are current, else 503",
)
async def readyz(request: Request[Any, Any, Any], state: State) -> Response[Any]:
    if state.get("draining"):
        return problem_response(request, status=503, detail="Shutting down (draining)")
    try:
        async with state.database.reader_engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        revision = await current_revision(state.database.engine)
    except (SQLAlchemyError, OSError) as exc:
        logger.warning("readiness check failed: database unreachable: %s", type(exc).__name__)
        return problem_response(request, status=503, detail="Database is unreachable")
    if revision != state.schema_head:
        return problem_response(
            request,
            status=503,
            detail=(
                f"Database schema is at {revision or 'nothing'}, code expects {state.schema_head}; "
                "run `byteor-controlplane migrate`"
            ),
        )
    return Response(HealthStatus(status="ready", database="ok", schema_revision=revision))
