"""pipelines, signing keys, config bundles, jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 09:17:13.896230
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from controlplane.db.types import UTCDateTime

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("dedupe_key", sa.String(length=200), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("run_after", UTCDateTime(), nullable=False),
        sa.Column("lease_expires_at", UTCDateTime(), nullable=True),
        sa.Column("locked_by", sa.String(length=64), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("dedupe_key", name="uq_jobs_dedupe_key"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index("ix_jobs_state_run_after", ["state", "run_after"], unique=False)

    op.create_table(
        "key_sets",
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "envelope",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_key_sets_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("org_id", "version", name=op.f("pk_key_sets")),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("private_key_sealed", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("not_after", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_signing_keys_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("kid", name=op.f("pk_signing_keys")),
    )
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_signing_keys_org_id"), ["org_id"], unique=False)

    op.create_table(
        "pipeline_drafts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("env_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column(
            "plan",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=40), nullable=True),
        sa.Column("updated_by", sa.String(length=40), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["env_id"],
            ["environments.id"],
            name=op.f("fk_pipeline_drafts_env_id_environments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_pipeline_drafts_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipeline_drafts")),
        sa.UniqueConstraint("env_id", "name", name="uq_pipeline_drafts_env_id_name"),
    )
    with op.batch_alter_table("pipeline_drafts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_pipeline_drafts_org_id"), ["org_id"], unique=False)

    op.create_table(
        "pipeline_versions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("env_id", sa.String(length=40), nullable=False),
        sa.Column("draft_id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("draft_revision", sa.Integer(), nullable=False),
        sa.Column(
            "plan",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("spec_kv", sa.Text(), nullable=False),
        sa.Column("spec_hash", sa.String(length=80), nullable=False),
        sa.Column("created_by", sa.String(length=40), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["draft_id"],
            ["pipeline_drafts.id"],
            name=op.f("fk_pipeline_versions_draft_id_pipeline_drafts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["env_id"],
            ["environments.id"],
            name=op.f("fk_pipeline_versions_env_id_environments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_pipeline_versions_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pipeline_versions")),
        sa.UniqueConstraint("draft_id", "number", name="uq_pipeline_versions_draft_id_number"),
    )
    with op.batch_alter_table("pipeline_versions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_pipeline_versions_env_id_spec_hash", ["env_id", "spec_hash"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_pipeline_versions_org_id"), ["org_id"], unique=False)

    op.create_table(
        "config_bundles",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=False),
        sa.Column("env_id", sa.String(length=40), nullable=False),
        sa.Column("pipeline_version_id", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("spec_hash", sa.String(length=80), nullable=False),
        sa.Column("tuning_profile", sa.String(length=32), nullable=False),
        sa.Column(
            "runtime_config",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("digest", sa.String(length=80), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column(
            "signature",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=40), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["env_id"],
            ["environments.id"],
            name=op.f("fk_config_bundles_env_id_environments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_config_bundles_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["pipeline_version_id"],
            ["pipeline_versions.id"],
            name=op.f("fk_config_bundles_pipeline_version_id_pipeline_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_config_bundles")),
    )
    with op.batch_alter_table("config_bundles", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_config_bundles_digest"), ["digest"], unique=False)
        batch_op.create_index("ix_config_bundles_env_id", ["env_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_config_bundles_org_id"), ["org_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("config_bundles", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_config_bundles_org_id"))
        batch_op.drop_index("ix_config_bundles_env_id")
        batch_op.drop_index(batch_op.f("ix_config_bundles_digest"))

    op.drop_table("config_bundles")
    with op.batch_alter_table("pipeline_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pipeline_versions_org_id"))
        batch_op.drop_index("ix_pipeline_versions_env_id_spec_hash")

    op.drop_table("pipeline_versions")
    with op.batch_alter_table("pipeline_drafts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_pipeline_drafts_org_id"))

    op.drop_table("pipeline_drafts")
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_signing_keys_org_id"))

    op.drop_table("signing_keys")
    op.drop_table("key_sets")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_state_run_after")

    op.drop_table("jobs")
