"""All tables, in one metadata so Alembic sees the whole schema.

Every child row references its parent with ``ON DELETE CASCADE``, so deleting a project or an
environment removes every descendant row inside the database itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from controlplane.db.types import JSONDocument, UTCDateTime, utcnow

__all__ = [
    "ApiTokenRow",
    "Base",
    "EnvironmentRow",
    "MembershipRow",
    "OrganizationRow",
    "ProjectRow",
    "UserRow",
]

ID = String(40)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _same_as_created(context: Any) -> datetime:
    created: datetime = context.get_current_parameters()["created_at"]
    return created


class TimestampedMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    # A new row's updated_at equals its created_at exactly.
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=_same_as_created, onupdate=utcnow, nullable=False
    )


class OrganizationRow(TimestampedMixin, Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    runtime_config: Mapped[dict[str, Any]] = mapped_column(JSONDocument, nullable=False)


class ProjectRow(TimestampedMixin, Base):
    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_projects_org_id_name"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    description: Mapped[str] = mapped_column(String(2000), nullable=False, default="")
    runtime_config: Mapped[dict[str, Any]] = mapped_column(JSONDocument, nullable=False)


class EnvironmentRow(TimestampedMixin, Base):
    __tablename__ = "environments"
    __table_args__ = (
        UniqueConstraint("project_id", "name", name="uq_environments_project_id_name"),
        Index("ix_environments_org_id", "org_id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False
    )
    project_id: Mapped[str] = mapped_column(
        ID, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    description: Mapped[str] = mapped_column(String(2000), nullable=False, default="")
    approvals_required: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    approver_role: Mapped[str] = mapped_column(String(16), nullable=False, default="approver")
    allow_self_approval: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    approval_window_seconds: Mapped[int] = mapped_column(Integer, nullable=False, default=86400)
    max_inflight_deployments: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    rollback_policy: Mapped[str] = mapped_column(String(16), nullable=False, default="manual")
    tuning_profile: Mapped[str] = mapped_column(String(32), nullable=False, default="default")
    runtime_config: Mapped[dict[str, Any]] = mapped_column(JSONDocument, nullable=False)


class UserRow(Base):
    """A person, or a service account (a non-human member of exactly one organization)."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    email: Mapped[str | None] = mapped_column(String(254), nullable=True, unique=True)
    service_org_id: Mapped[str | None] = mapped_column(
        ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class MembershipRow(Base):
    __tablename__ = "memberships"

    org_id: Mapped[str] = mapped_column(
        ID, ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ID, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class ApiTokenRow(Base):
    """A bearer token. Only the SHA-256 digest of the secret is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(
        ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    hint: Mapped[str] = mapped_column(String(32), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
