"""All tables, in one metadata so Alembic sees the whole schema.

Every child row references its parent with ``ON DELETE CASCADE``, so deleting a project or an
environment removes every descendant row inside the database itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, undefer

from controlplane.db.types import JSONDocument, UTCDateTime, utcnow
from controlplane.delivery.states import (
    ApprovalStatus,
    DeploymentStatus,
    TargetPhase,
    TargetStatus,
)

if TYPE_CHECKING:
    import enum

__all__ = [
    "FULL_DEPLOYMENT",
    "AgentKeyRow",
    "AgentRow",
    "ApiTokenRow",
    "ApprovalRow",
    "ArtifactRow",
    "Base",
    "ConfigBundleRow",
    "DeploymentEventRow",
    "DeploymentRow",
    "DeploymentTargetRow",
    "EnrollmentTokenRow",
    "EnvironmentRow",
    "JobRow",
    "KeySetRow",
    "MembershipRow",
    "OrganizationRow",
    "PipelineDraftRow",
    "PipelineVersionRow",
    "ProjectRow",
    "ReplayRow",
    "SigningKeyRow",
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


def _status(kind: type[enum.StrEnum], length: int) -> Enum:
    """A status column typed by its enum, stored as its string value (no database enum type)."""
    return Enum(
        kind,
        native_enum=False,
        create_constraint=False,
        length=length,
        values_callable=lambda members: [m.value for m in members],
        validate_strings=True,
    )


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
    #: The desired state, written only by the delivery domain (through the environments
    #: service): the current deployment and the bundle every agent here should run.
    current_deployment_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    desired_bundle_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    desired_bundle_digest: Mapped[str | None] = mapped_column(String(80), nullable=True)


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
    #: ``personal`` (an API token) or ``session`` (issued by a login).
    kind: Mapped[str] = mapped_column(
        String(16), nullable=False, default="personal", server_default="personal"
    )
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    hint: Mapped[str] = mapped_column(String(32), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class UserIdentityRow(Base):
    """A person's account at an OpenID Connect provider, linked to a user by ``(issuer, subject)``."""

    __tablename__ = "user_identities"
    __table_args__ = (
        UniqueConstraint("issuer", "subject", name="uq_user_identities_issuer_subject"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    user_id: Mapped[str] = mapped_column(
        ID, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
    )
    issuer: Mapped[str] = mapped_column(String(512), nullable=False)
    subject: Mapped[str] = mapped_column(String(255), nullable=False)
    #: The verified e-mail address the provider asserted at the last login.
    email: Mapped[str | None] = mapped_column(String(254), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    last_login_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class LoginStateRow(Base):
    """A login ``state`` already presented at the callback: a replay is refused."""

    __tablename__ = "login_states"

    state_digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)


class PipelineDraftRow(TimestampedMixin, Base):
    """A mutable authoring plan; every update bumps ``revision`` (used for If-Match)."""

    __tablename__ = "pipeline_drafts"
    __table_args__ = (UniqueConstraint("env_id", "name", name="uq_pipeline_drafts_env_id_name"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    env_id: Mapped[str] = mapped_column(
        ID, ForeignKey("environments.id", ondelete="CASCADE"), nullable=False
    )
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    plan: Mapped[Any] = mapped_column(JSONDocument, nullable=False)
    revision: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_by: Mapped[str | None] = mapped_column(ID, nullable=True)
    updated_by: Mapped[str | None] = mapped_column(ID, nullable=True)


class PipelineVersionRow(Base):
    """An immutable, promoted version of a draft: the canonical spec.kv and its hash."""

    __tablename__ = "pipeline_versions"
    __table_args__ = (
        UniqueConstraint("draft_id", "number", name="uq_pipeline_versions_draft_id_number"),
        Index("ix_pipeline_versions_env_id_spec_hash", "env_id", "spec_hash"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    env_id: Mapped[str] = mapped_column(
        ID, ForeignKey("environments.id", ondelete="CASCADE"), nullable=False
    )
    draft_id: Mapped[str] = mapped_column(
        ID, ForeignKey("pipeline_drafts.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    draft_revision: Mapped[int] = mapped_column(Integer, nullable=False)
    plan: Mapped[Any] = mapped_column(JSONDocument, nullable=False)
    spec_kv: Mapped[str] = mapped_column(Text, nullable=False)
    spec_hash: Mapped[str] = mapped_column(String(80), nullable=False)
    created_by: Mapped[str | None] = mapped_column(ID, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class SigningKeyRow(Base):
    """An organization's Ed25519 key; the private half is AES-GCM encrypted with the KEK."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    public_key: Mapped[str] = mapped_column(String(64), nullable=False)
    private_key_sealed: Mapped[str] = mapped_column(Text, nullable=False)
    active: Mapped[bool] = mapped_column(Boolean, nullable=False)
    not_after: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class KeySetRow(Base):
    """Each published public key set of an organization, as the signed envelope agents receive."""

    __tablename__ = "key_sets"

    org_id: Mapped[str] = mapped_column(
        ID, ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    envelope: Mapped[Any] = mapped_column(JSONDocument, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class ConfigBundleRow(TimestampedMixin, Base):
    """A pipeline version plus the environment's runtime posture, built into a signed archive."""

    __tablename__ = "config_bundles"
    __table_args__ = (Index("ix_config_bundles_env_id", "env_id"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    env_id: Mapped[str] = mapped_column(
        ID, ForeignKey("environments.id", ondelete="CASCADE"), nullable=False
    )
    pipeline_version_id: Mapped[str] = mapped_column(
        ID, ForeignKey("pipeline_versions.id", ondelete="CASCADE"), nullable=False
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    spec_hash: Mapped[str] = mapped_column(String(80), nullable=False)
    tuning_profile: Mapped[str] = mapped_column(String(32), nullable=False)
    runtime_config: Mapped[Any] = mapped_column(JSONDocument, nullable=False)
    digest: Mapped[str | None] = mapped_column(String(80), nullable=True, index=True)
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    signature: Mapped[Any | None] = mapped_column(JSONDocument, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_by: Mapped[str | None] = mapped_column(ID, nullable=True)


class JobRow(Base):
    """A durable unit of background work, claimed under a lease by any worker process."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_run_after", "state", "run_after"),
        UniqueConstraint("dedupe_key", name="uq_jobs_dedupe_key"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), nullable=False)
    payload: Mapped[Any] = mapped_column(JSONDocument, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    dedupe_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=5)
    run_after: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    locked_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, nullable=False
    )


class EnrollmentTokenRow(Base):
    """An environment-scoped ``agent:enroll`` credential: expiring, counted, revocable."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    env_id: Mapped[str] = mapped_column(
        ID, ForeignKey("environments.id", ondelete="CASCADE"), nullable=False, index=True
    )
    token_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    hint: Mapped[str] = mapped_column(String(32), nullable=False)
    max_uses: Mapped[int] = mapped_column(Integer, nullable=False)
    uses: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_by: Mapped[str | None] = mapped_column(ID, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class AgentRow(TimestampedMixin, Base):
    """An enrolled host. Heartbeat fields are written in coalesced batches, not per request."""

    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("env_id", "name", name="uq_agents_env_id_name"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    project_id: Mapped[str] = mapped_column(
        ID, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    )
    env_id: Mapped[str] = mapped_column(
        ID, ForeignKey("environments.id", ondelete="CASCADE"), nullable=False, index=True
    )
    name: Mapped[str] = mapped_column(String(128), nullable=False)
    hostname: Mapped[str | None] = mapped_column(String(255), nullable=True)
    public_key: Mapped[str | None] = mapped_column(String(128), nullable=True)
    enrolled_with: Mapped[str | None] = mapped_column(ID, nullable=True)
    agent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_sequence: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    status_reported: Mapped[str | None] = mapped_column(String(16), nullable=True)
    uptime_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    active_deployment_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    active_bundle_digest: Mapped[str | None] = mapped_column(String(80), nullable=True)
    resources: Mapped[Any | None] = mapped_column(JSONDocument, nullable=True)
    spool: Mapped[Any | None] = mapped_column(JSONDocument, nullable=True)
    #: The last deployment manifest sequence issued to this agent (monotonic per agent).
    manifest_sequence: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default="0"
    )


class AgentKeyRow(Base):
    """An agent's runtime key, bound to the agent and to route scopes.

    A rotated key is ``pending`` (its secret sealed with the KEK until it is handed to the agent in
    a heartbeat response) until the agent first uses it; then the old key is revoked.
    """

    __tablename__ = "agent_keys"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    agent_id: Mapped[str] = mapped_column(
        ID, ForeignKey("agents.id", ondelete="CASCADE"), nullable=False, index=True
    )
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    hint: Mapped[str] = mapped_column(String(32), nullable=False)
    scopes: Mapped[Any] = mapped_column(JSONDocument, nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    sealed_secret: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class DeploymentRow(TimestampedMixin, Base):
    """A request to run a config bundle on agents; its status moves only through the lifecycle."""

    __tablename__ = "deployments"
    __table_args__ = (Index("ix_deployments_env_id_status", "env_id", "status"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    env_id: Mapped[str] = mapped_column(
        ID, ForeignKey("environments.id", ondelete="CASCADE"), nullable=False
    )
    pipeline_version_id: Mapped[str] = mapped_column(
        ID, ForeignKey("pipeline_versions.id", ondelete="CASCADE"), nullable=False
    )
    config_bundle_id: Mapped[str | None] = mapped_column(
        ID, ForeignKey("config_bundles.id", ondelete="CASCADE"), nullable=True
    )
    status: Mapped[DeploymentStatus] = mapped_column(_status(DeploymentStatus, 24), nullable=False)
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    description: Mapped[str] = mapped_column(String(2000), nullable=False, default="")
    #: The rollout's targets: the requested agents until it rolls out, then those online then
    #: (plus agents that joined while it was deploying). Deferred, and an error to read unless
    #: the query asked for it (``FULL_DEPLOYMENT``): for a fleet it is a list of 10,000 ids,
    #: and the paths a fleet runs per request (deployment checks, reports) never need it.
    agent_ids: Mapped[Any] = mapped_column(
        JSONDocument, nullable=False, deferred=True, deferred_raiseload=True
    )
    #: The agents the deployer named, or ``None`` for the whole environment (deferred too).
    requested_agent_ids: Mapped[Any | None] = mapped_column(
        JSONDocument, nullable=True, deferred=True, deferred_raiseload=True
    )
    approvals_required: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    requested_by: Mapped[str | None] = mapped_column(ID, nullable=True)
    rollout_deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: When the current status gives up (every status that waits has one; resting ones none).
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The environment's current deployment when this one started rolling out (what a
    #: rollback of this one restores).
    previous_deployment_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    #: The deployment that became current after this one.
    superseded_by: Mapped[str | None] = mapped_column(ID, nullable=True)


#: Query options loading a deployment whole, its deferred agent lists included.
FULL_DEPLOYMENT = (undefer(DeploymentRow.agent_ids), undefer(DeploymentRow.requested_agent_ids))


class DeploymentEventRow(Base):
    """One lifecycle transition: from, to, who, why, when."""

    __tablename__ = "deployment_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_id: Mapped[str] = mapped_column(
        ID, ForeignKey("deployments.id", ondelete="CASCADE"), nullable=False, index=True
    )
    from_status: Mapped[str | None] = mapped_column(String(24), nullable=True)
    to_status: Mapped[str] = mapped_column(String(24), nullable=False)
    actor: Mapped[str] = mapped_column(String(64), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)


class DeploymentTargetRow(Base):
    """One agent's part in one phase (``deploy`` or ``rollback``) of a deployment."""

    __tablename__ = "deployment_targets"
    __table_args__ = (Index("ix_deployment_targets_agent_id_sequence", "agent_id", "sequence"),)

    deployment_id: Mapped[str] = mapped_column(
        ID, ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    agent_id: Mapped[str] = mapped_column(
        ID, ForeignKey("agents.id", ondelete="CASCADE"), primary_key=True
    )
    phase: Mapped[TargetPhase] = mapped_column(_status(TargetPhase, 16), primary_key=True)
    bundle_id: Mapped[str] = mapped_column(
        ID, ForeignKey("config_bundles.id", ondelete="CASCADE"), nullable=False
    )
    bundle_digest: Mapped[str] = mapped_column(String(80), nullable=False)
    sequence: Mapped[int] = mapped_column(BigInteger, nullable=False)
    status: Mapped[TargetStatus] = mapped_column(_status(TargetStatus, 16), nullable=False)
    #: How many manifests this row has carried (a convergence retry issues a fresh one).
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=1, server_default="1")
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: The signed envelope, loaded only where it is served (``undefer``): decoding it on every
    #: report batch, tally and deadline sweep cost a fleet's worth of JSON parsing each time.
    manifest: Mapped[Any] = mapped_column(
        JSONDocument, nullable=False, deferred=True, deferred_raiseload=True
    )
    previous_bundle_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, nullable=False
    )


class ApprovalRow(Base):
    """One required approval of a deployment: ``pending`` until decided, expired or revoked."""

    __tablename__ = "approvals"
    __table_args__ = (Index("ix_approvals_deployment_id", "deployment_id"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    env_id: Mapped[str] = mapped_column(
        ID, ForeignKey("environments.id", ondelete="CASCADE"), nullable=False, index=True
    )
    deployment_id: Mapped[str] = mapped_column(
        ID, ForeignKey("deployments.id", ondelete="CASCADE"), nullable=False
    )
    status: Mapped[ApprovalStatus] = mapped_column(_status(ApprovalStatus, 16), nullable=False)
    requested_by: Mapped[str | None] = mapped_column(ID, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(ID, nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    comment: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, nullable=False
    )


class ArtifactRow(TimestampedMixin, Base):
    """An immutable file an agent captured (incident bundle or telemetry), stored by digest."""

    __tablename__ = "artifacts"
    __table_args__ = (
        UniqueConstraint(
            "agent_id", "idempotency_key", name="uq_artifacts_agent_id_idempotency_key"
        ),
        Index("ix_artifacts_agent_id_digest", "agent_id", "digest"),
        Index("ix_artifacts_env_id", "env_id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    env_id: Mapped[str] = mapped_column(
        ID, ForeignKey("environments.id", ondelete="CASCADE"), nullable=False
    )
    agent_id: Mapped[str | None] = mapped_column(
        ID, ForeignKey("agents.id", ondelete="SET NULL"), nullable=True
    )
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    digest: Mapped[str] = mapped_column(String(80), nullable=False)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    filename: Mapped[str] = mapped_column(String(255), nullable=False)
    captured_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    deployment_id: Mapped[str | None] = mapped_column(ID, nullable=True)
    spec_hash: Mapped[str | None] = mapped_column(String(80), nullable=True)
    idempotency_key: Mapped[str] = mapped_column(String(128), nullable=False)
    signature: Mapped[str] = mapped_column(String(128), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    ingest: Mapped[Any | None] = mapped_column(JSONDocument, nullable=True)
    pipeline_version_id: Mapped[str | None] = mapped_column(
        ID, ForeignKey("pipeline_versions.id", ondelete="SET NULL"), nullable=True
    )


class ReplayRow(TimestampedMixin, Base):
    """A deterministic replay of an incident artifact through the pipeline version behind it."""

    __tablename__ = "replays"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    org_id: Mapped[str] = mapped_column(
        ID, ForeignKey("organizations.id", ondelete="CASCADE"), nullable=False, index=True
    )
    env_id: Mapped[str] = mapped_column(
        ID, ForeignKey("environments.id", ondelete="CASCADE"), nullable=False, index=True
    )
    artifact_id: Mapped[str] = mapped_column(
        ID, ForeignKey("artifacts.id", ondelete="CASCADE"), nullable=False, index=True
    )
    pipeline_version_id: Mapped[str] = mapped_column(
        ID, ForeignKey("pipeline_versions.id", ondelete="CASCADE"), nullable=False
    )
    mode: Mapped[str] = mapped_column(String(16), nullable=False)
    last_n: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[str] = mapped_column(String(24), nullable=False)
    requested_by: Mapped[str | None] = mapped_column(ID, nullable=True)
    approved_by: Mapped[str | None] = mapped_column(ID, nullable=True)
    audit: Mapped[str | None] = mapped_column(Text, nullable=True)
    audit_sha256: Mapped[str | None] = mapped_column(String(80), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
