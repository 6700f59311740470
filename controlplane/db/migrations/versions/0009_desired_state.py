"""desired state per environment, deadlines, superseded deployments, target attempts

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 21:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from controlplane.db.types import UTCDateTime
from shared.ids import new_id

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("current_deployment_id", sa.String(40), nullable=True))
        batch_op.add_column(sa.Column("desired_bundle_id", sa.String(40), nullable=True))
        batch_op.add_column(sa.Column("desired_bundle_digest", sa.String(80), nullable=True))
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("requested_agent_ids", _JSON, nullable=True))
        batch_op.add_column(sa.Column("deadline_at", UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("previous_deployment_id", sa.String(40), nullable=True))
        batch_op.add_column(sa.Column("superseded_by", sa.String(40), nullable=True))
    with op.batch_alter_table("deployment_targets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="1"))
    # Rollback targets that restored their bundle are now ``confirmed``.
    op.execute(
        "UPDATE deployment_targets SET status = 'confirmed' "
        "WHERE phase = 'rollback' AND status = 'rolled_back'"
    )
    # Each environment's current deployment: the newest that reached ``active``.
    op.execute(
        """
        UPDATE environments SET
          current_deployment_id = (
            SELECT d.id FROM deployments d WHERE d.env_id = environments.id
              AND d.status = 'active' ORDER BY d.created_at DESC, d.id DESC LIMIT 1),
          desired_bundle_id = (
            SELECT d.config_bundle_id FROM deployments d WHERE d.env_id = environments.id
              AND d.status = 'active' ORDER BY d.created_at DESC, d.id DESC LIMIT 1),
          desired_bundle_digest = (
            SELECT b.digest FROM deployments d JOIN config_bundles b ON b.id = d.config_bundle_id
              WHERE d.env_id = environments.id AND d.status = 'active'
              ORDER BY d.created_at DESC, d.id DESC LIMIT 1)
        """
    )
    _backfill()


_PROGRESSING = ("pending_approval", "approved", "building", "deploying", "rolling_back")
#: The default build, rollout and rollback timeouts, for deployments that predate deadlines.
_DEFAULT_TIMEOUT = timedelta(seconds=900)


def _backfill() -> None:
    """Give deployments from before this revision what the new lifecycle relies on.

    - every status that waits gets a deadline and a deadline job (else it could wait forever);
    - in-flight deployments keep exactly the targets they had (no agent joins them);
    - deployments are chained per environment in creation order: each active one supersedes the
      active, failed and rolled-back ones before it.
    """
    bind = op.get_bind()
    meta = sa.MetaData()
    deployments = sa.Table("deployments", meta, autoload_with=bind)
    approvals = sa.Table("approvals", meta, autoload_with=bind)
    jobs = sa.Table("jobs", meta, autoload_with=bind)
    now = datetime.now(UTC)
    rows = bind.execute(
        sa.select(
            deployments.c.id,
            deployments.c.status,
            deployments.c.rollout_deadline_at,
            deployments.c.agent_ids,
        ).where(deployments.c.status.in_(_PROGRESSING))
    ).all()
    for deployment_id, status, rollout_deadline, agent_ids in rows:
        deadline = now + _DEFAULT_TIMEOUT
        if status == "pending_approval":
            expires = bind.execute(
                sa.select(sa.func.min(approvals.c.expires_at)).where(
                    approvals.c.deployment_id == deployment_id
                )
            ).scalar()
            deadline = expires or deadline
        elif status == "deploying" and rollout_deadline is not None:
            deadline = rollout_deadline
        if isinstance(deadline, datetime) and deadline.tzinfo is None:
            deadline = deadline.replace(tzinfo=UTC)
        bind.execute(
            deployments.update()
            .where(deployments.c.id == deployment_id)
            .values(deadline_at=deadline, requested_agent_ids=agent_ids)
        )
        bind.execute(
            jobs.insert().values(
                id=new_id("job"),
                kind="deployment.deadline",
                payload={"deployment_id": deployment_id, "status": status},
                state="queued",
                dedupe_key=f"deployment.deadline:{deployment_id}:{status}",
                attempts=0,
                max_attempts=5,
                run_after=deadline,
                created_at=now,
                updated_at=now,
            )
        )
    history = bind.execute(
        sa.select(deployments.c.id, deployments.c.env_id, deployments.c.status)
        .where(deployments.c.status.in_(("active", "failed", "rolled_back")))
        .order_by(deployments.c.env_id, deployments.c.created_at, deployments.c.id)
    ).all()
    previous: dict[str, str] = {}  # the newest active deployment so far, per environment
    resting: dict[str, list[str]] = {}  # failed or rolled back since then, per environment
    for deployment_id, env_id, status in history:
        if status != "active":
            resting.setdefault(env_id, []).append(deployment_id)
            continue
        older = [*resting.pop(env_id, []), *([previous[env_id]] if env_id in previous else [])]
        if older:
            bind.execute(
                deployments.update()
                .where(deployments.c.id.in_(older))
                .values(superseded_by=deployment_id)
            )
        if env_id in previous:
            bind.execute(
                deployments.update()
                .where(deployments.c.id == deployment_id)
                .values(previous_deployment_id=previous[env_id])
            )
        previous[env_id] = deployment_id


def downgrade() -> None:
    op.execute(
        "UPDATE deployment_targets SET status = 'rolled_back' "
        "WHERE phase = 'rollback' AND status = 'confirmed'"
    )
    with op.batch_alter_table("deployment_targets", schema=None) as batch_op:
        batch_op.drop_column("attempts")
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("superseded_by")
        batch_op.drop_column("previous_deployment_id")
        batch_op.drop_column("deadline_at")
        batch_op.drop_column("requested_agent_ids")
    with op.batch_alter_table("environments", schema=None) as batch_op:
        batch_op.drop_column("desired_bundle_digest")
        batch_op.drop_column("desired_bundle_id")
        batch_op.drop_column("current_deployment_id")
