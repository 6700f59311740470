"""REST models of the resource tree: organizations, projects, environments, members and tokens.

Request bodies derive from :class:`~shared.base.RestInput` (unknown fields refused). Update bodies
are partial: a field left out keeps its stored value (``UNSET``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from msgspec import UNSET, Meta, UnsetType

from shared.base import RestInput, RestOutput
from shared.roles import PrincipalKind, Role, RollbackPolicy, TuningProfile

__all__ = [
    "ApiToken",
    "ApiTokenCreate",
    "ApiTokenCreated",
    "Environment",
    "EnvironmentCreate",
    "EnvironmentSettings",
    "EnvironmentUpdate",
    "Me",
    "Member",
    "MemberCreate",
    "MemberUpdate",
    "Membership",
    "Name",
    "Organization",
    "OrganizationCreate",
    "OrganizationUpdate",
    "Page",
    "Project",
    "ProjectCreate",
    "ProjectUpdate",
    "RuntimeConfig",
    "ServiceAccount",
    "ServiceAccountCreate",
    "ServiceAccountCreated",
]

T = TypeVar("T")

#: A display name: 1-128 characters, no control characters, no leading or trailing whitespace.
Name = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=128,
        pattern=r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$",
        description="1-128 characters, no control characters, no surrounding whitespace",
    ),
]
Description = Annotated[str, Meta(max_length=2000)]
#: A layer of runtime configuration (a JSON object); layers merge org < project < environment.
RuntimeConfig = dict[str, Any]
Email = Annotated[
    str,
    Meta(max_length=254, pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", description="an e-mail address"),
]
ExpiresIn = Annotated[int, Meta(ge=60, le=366 * 86400, description="lifetime in seconds")]


class Page(RestOutput, Generic[T]):
    """One page of a list. Pass ``next_cursor`` back as ``?cursor=`` for the next page."""

    items: list[T]
    next_cursor: str | None = None


# --- organizations -------------------------------------------------------------------------------


class OrganizationCreate(RestInput):
    name: Name
    runtime_config: RuntimeConfig = msgspec.field(default_factory=dict)


class OrganizationUpdate(RestInput):
    name: Name | UnsetType = UNSET
    runtime_config: RuntimeConfig | UnsetType = UNSET


class Organization(RestOutput):
    id: str
    name: str
    runtime_config: RuntimeConfig
    created_at: datetime
    updated_at: datetime


# --- projects ------------------------------------------------------------------------------------


class ProjectCreate(RestInput):
    name: Name
    description: Description = ""
    runtime_config: RuntimeConfig = msgspec.field(default_factory=dict)


class ProjectUpdate(RestInput):
    name: Name | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    runtime_config: RuntimeConfig | UnsetType = UNSET


class Project(RestOutput):
    id: str
    org_id: str
    name: str
    description: str
    runtime_config: RuntimeConfig
    created_at: datetime
    updated_at: datetime


# --- environments --------------------------------------------------------------------------------

ApprovalsRequired = Annotated[int, Meta(ge=0, le=10)]
ApprovalWindow = Annotated[int, Meta(ge=60, le=30 * 86400)]
InflightCap = Annotated[int, Meta(ge=1, le=100)]


class EnvironmentSettings(RestOutput):
    """The governance and runtime posture of an environment."""

    approvals_required: int = 0
    approver_role: Role = Role.APPROVER
    allow_self_approval: bool = False
    approval_window_seconds: int = 86400
    max_inflight_deployments: int = 1
    rollback_policy: RollbackPolicy = RollbackPolicy.MANUAL
    tuning_profile: TuningProfile = TuningProfile.DEFAULT


class EnvironmentCreate(RestInput):
    name: Name
    description: Description = ""
    approvals_required: ApprovalsRequired = 0
    approver_role: Role = Role.APPROVER
    allow_self_approval: bool = False
    approval_window_seconds: ApprovalWindow = 86400
    max_inflight_deployments: InflightCap = 1
    rollback_policy: RollbackPolicy = RollbackPolicy.MANUAL
    tuning_profile: TuningProfile = TuningProfile.DEFAULT
    runtime_config: RuntimeConfig = msgspec.field(default_factory=dict)


class EnvironmentUpdate(RestInput):
    name: Name | UnsetType = UNSET
    description: Description | UnsetType = UNSET
    approvals_required: ApprovalsRequired | UnsetType = UNSET
    approver_role: Role | UnsetType = UNSET
    allow_self_approval: bool | UnsetType = UNSET
    approval_window_seconds: ApprovalWindow | UnsetType = UNSET
    max_inflight_deployments: InflightCap | UnsetType = UNSET
    rollback_policy: RollbackPolicy | UnsetType = UNSET
    tuning_profile: TuningProfile | UnsetType = UNSET
    runtime_config: RuntimeConfig | UnsetType = UNSET


class Environment(RestOutput):
    id: str
    org_id: str
    project_id: str
    name: str
    description: str
    approvals_required: int
    approver_role: Role
    allow_self_approval: bool
    approval_window_seconds: int
    max_inflight_deployments: int
    rollback_policy: RollbackPolicy
    tuning_profile: TuningProfile
    runtime_config: RuntimeConfig
    created_at: datetime
    updated_at: datetime
    #: The desired state: the newest deployment that reached ``active`` (or the one a rollback
    #: restored) and the digest of its bundle, which every agent here converges to.
    current_deployment_id: str | None = None
    desired_bundle_digest: str | None = None


# --- members, service accounts, tokens -----------------------------------------------------------


class MemberCreate(RestInput):
    """Invite a person by e-mail; an unknown address creates a user who can sign in later."""

    email: Email
    role: Role = Role.VIEWER


class MemberUpdate(RestInput):
    role: Role


class Member(RestOutput):
    user_id: str
    org_id: str
    kind: PrincipalKind
    name: str
    email: str | None
    role: Role
    created_at: datetime


class ServiceAccountCreate(RestInput):
    name: Name
    role: Role = Role.VIEWER


class ServiceAccount(RestOutput):
    id: str
    org_id: str
    name: str
    role: Role
    created_at: datetime


class ServiceAccountCreated(ServiceAccount):
    """Returned once at creation: ``token`` is not shown again."""

    token: str
    token_id: str


class ApiTokenCreate(RestInput):
    name: Name
    expires_in: ExpiresIn | None = None


class ApiToken(RestOutput):
    id: str
    name: str
    user_id: str
    #: ``personal`` (an API token) or ``session`` (issued by a login at /auth/callback).
    kind: str
    hint: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class ApiTokenCreated(ApiToken):
    """Returned once at creation: ``token`` is not shown again."""

    token: str


class Membership(RestOutput):
    org_id: str
    org_name: str
    role: Role


class LoginSession(RestOutput):
    """Returned once by ``/auth/callback``: a session bearer token for the person who logged in."""

    token: str
    token_id: str
    expires_at: datetime
    user_id: str
    email: str | None
    name: str
    #: Whether this login created the user (a new user belongs to no organization yet).
    new_user: bool
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret
    #: The same-origin path the login was started for (``/auth/login?redirect_to=``).
    redirect_to: str | None = None


class Me(RestOutput):
    id: str
    kind: PrincipalKind
    name: str
    email: str | None
    memberships: list[Membership]
