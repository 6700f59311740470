"""desired state per environment, deadlines, superseded deployments, target attempts

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 21:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from controlplane.db.types import UTCDateTime

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
              AND d.status = 'active' ORDER BY d.updated_at DESC, d.id DESC LIMIT 1),
          desired_bundle_id = (
            SELECT d.config_bundle_id FROM deployments d WHERE d.env_id = environments.id
              AND d.status = 'active' ORDER BY d.updated_at DESC, d.id DESC LIMIT 1),
          desired_bundle_digest = (
            SELECT b.digest FROM deployments d JOIN config_bundles b ON b.id = d.config_bundle_id
              WHERE d.env_id = environments.id AND d.status = 'active'
              ORDER BY d.updated_at DESC, d.id DESC LIMIT 1)
        """
    )


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
