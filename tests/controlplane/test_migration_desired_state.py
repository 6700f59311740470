"""Revision 0009 on a database from before it: in-flight deployments get deadlines, history chains."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy import Connection

from controlplane.db import create_database
from controlplane.db.migrate import alembic_config, upgrade
from tests.backends import throwaway_database

pytestmark = pytest.mark.anyio

NOW = datetime.now(UTC).replace(microsecond=0)


def _to(revision: str) -> Any:
    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    return run


def _filler(column: sa.Column[Any]) -> Any:
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return False
    if isinstance(kind, sa.Integer):
        return 0
    if isinstance(kind, sa.DateTime):
        return NOW
    if isinstance(kind, sa.JSON):
        return {}
    return "x"


def _insert(connection: Connection, table: str, **values: Any) -> None:
    reflected = sa.Table(table, sa.MetaData(), autoload_with=connection)
    row = {
        c.name: _filler(c)
        for c in reflected.columns
        if not c.nullable and c.server_default is None and c.name not in values
    }
    connection.execute(reflected.insert().values(**(row | values)))


def _seed(connection: Connection) -> None:
    _insert(connection, "organizations", id="org_1")
    _insert(connection, "projects", id="prj_1", org_id="org_1")
    _insert(connection, "environments", id="env_1", org_id="org_1", project_id="prj_1")
    _insert(connection, "pipeline_drafts", id="drf_1", org_id="org_1", env_id="env_1")
    _insert(
        connection,
        "pipeline_versions",
        id="ver_1",
        org_id="org_1",
        env_id="env_1",
        draft_id="drf_1",
    )
    for i, digest in ((1, "sha256:old"), (2, "sha256:new")):
        _insert(
            connection,
            "config_bundles",
            id=f"cfb_{i}",
            org_id="org_1",
            env_id="env_1",
            pipeline_version_id="ver_1",
            status="ready",
            digest=digest,
        )

    def deployment(deployment_id: str, status: str, minutes: int, **extra: Any) -> None:
        _insert(
            connection,
            "deployments",
            id=deployment_id,
            org_id="org_1",
            env_id="env_1",
            pipeline_version_id="ver_1",
            status=status,
            agent_ids=["agt_1"],
            created_at=NOW - timedelta(minutes=minutes),
            updated_at=NOW - timedelta(minutes=minutes),
            **extra,
        )

    deployment("dep_a", "active", 50, config_bundle_id="cfb_1")
    deployment("dep_failed", "failed", 45)
    deployment("dep_b", "active", 40, config_bundle_id="cfb_2")
    deployment("dep_pending", "pending_approval", 30)
    _insert(
        connection,
        "approvals",
        id="apr_1",
        org_id="org_1",
        env_id="env_1",
        deployment_id="dep_pending",
        status="pending",
        expires_at=NOW + timedelta(hours=2),
    )
    deployment("dep_deploying", "deploying", 20, rollout_deadline_at=NOW + timedelta(minutes=5))
    deployment("dep_rolling", "rolling_back", 10)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
async def test_deployments_from_before_get_deadlines_and_a_history(
    backend: str, tmp_path: Path
) -> None:
    async with throwaway_database(backend, tmp_path) as url:
        database = create_database(url)
        try:
            async with database.engine.begin() as connection:
                await connection.run_sync(_to("0008"))
                await connection.run_sync(_seed)
            await upgrade(database.engine)
            async with database.engine.connect() as connection:
                rows = {
                    r.id: r
                    for r in (
                        await connection.execute(
                            sa.text(
                                "SELECT id, deadline_at, previous_deployment_id, superseded_by, "
                                "requested_agent_ids FROM deployments"
                            )
                        )
                    ).all()
                }
                env = (
                    await connection.execute(
                        sa.text(
                            "SELECT current_deployment_id, desired_bundle_digest FROM environments"
                        )
                    )
                ).one()
                jobs = {
                    r.dedupe_key
                    for r in (
                        await connection.execute(
                            sa.text("SELECT dedupe_key FROM jobs WHERE state = 'queued'")
                        )
                    ).all()
                }
        finally:
            await database.dispose()
    assert tuple(env) == ("dep_b", "sha256:new")
    assert (rows["dep_a"].superseded_by, rows["dep_b"].previous_deployment_id) == (
        "dep_b",
        "dep_a",
    )
    assert rows["dep_b"].superseded_by is None
    assert rows["dep_failed"].superseded_by == "dep_b"  # it no longer holds its hosts
    for waiting in ("dep_pending", "dep_deploying", "dep_rolling"):
        assert rows[waiting].deadline_at is not None, waiting
        assert rows[waiting].requested_agent_ids is not None
    assert rows["dep_a"].deadline_at is None
    assert jobs == {
        "deployment.deadline:dep_pending:pending_approval",
        "deployment.deadline:dep_deploying:deploying",
        "deployment.deadline:dep_rolling:rolling_back",
    }
