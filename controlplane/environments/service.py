"""Environments: list, create, read, update (partial), delete (cascading)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from msgspec import UNSET
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from controlplane.db.engine import AGENT_KEYS, FLEET, mark_changed
from controlplane.db.models import EnvironmentRow
from controlplane.errors import Conflict, NotFound
from controlplane.orgs.access import authorize
from controlplane.pagination import fetch_page
from controlplane.projects.service import get_project_row
from shared.ids import new_id
from shared.resources import Environment, EnvironmentCreate, EnvironmentUpdate, Page
from shared.roles import Role, RollbackPolicy, TuningProfile

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.auth.principal import Principal
    from controlplane.pagination import PageRequest

__all__ = [
    "DesiredState",
    "create_environment",
    "delete_environment",
    "desired_state",
    "environment_schema",
    "get_environment",
    "get_environment_row",
    "list_environments",
    "set_desired_state",
    "update_environment",
]

_SETTINGS = (
    "description",
    "approvals_required",
    "approver_role",
    "allow_self_approval",
    "approval_window_seconds",
    "max_inflight_deployments",
    "rollback_policy",
    "tuning_profile",
    "runtime_config",
)


def environment_schema(row: EnvironmentRow) -> Environment:
    return Environment(
        id=row.id,
        org_id=row.org_id,
        project_id=row.project_id,
        name=row.name,
        description=row.description,
        approvals_required=row.approvals_required,
        approver_role=Role(row.approver_role),
        allow_self_approval=row.allow_self_approval,
        approval_window_seconds=row.approval_window_seconds,
        max_inflight_deployments=row.max_inflight_deployments,
        rollback_policy=RollbackPolicy(row.rollback_policy),
        tuning_profile=TuningProfile(row.tuning_profile),
        runtime_config=row.runtime_config,
        current_deployment_id=row.current_deployment_id,
        desired_bundle_digest=row.desired_bundle_digest,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _column_value(value: object) -> object:
    return value.value if isinstance(value, enum.Enum) else value


async def get_environment_row(
    session: AsyncSession, org_id: str, project_id: str, env_id: str
) -> EnvironmentRow:
    """The environment, which must sit under ``org_id``/``project_id`` (else 404)."""
    row = await session.scalar(
        select(EnvironmentRow).where(
            EnvironmentRow.id == env_id,
            EnvironmentRow.project_id == project_id,
            EnvironmentRow.org_id == org_id,
        )
    )
    if row is None:
        raise NotFound(f"No environment {env_id} in project {project_id}")
    return row


async def _ensure_name_free(
    session: AsyncSession, project_id: str, name: str, except_id: str | None = None
) -> None:
    clash = await session.scalar(
        select(EnvironmentRow.id).where(
            EnvironmentRow.project_id == project_id, EnvironmentRow.name == name
        )
    )
    if clash is not None and clash != except_id:
        raise Conflict(f"An environment named {name!r} already exists in this project")


async def _commit_unique_name(session: AsyncSession, name: str) -> None:
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        raise Conflict(f"An environment named {name!r} already exists in this project") from None


async def list_environments(
    session: AsyncSession, caller: Principal, org_id: str, project_id: str, page: PageRequest
) -> Page[Environment]:
    await authorize(session, caller, org_id, Role.VIEWER)
    await get_project_row(session, org_id, project_id)
    statement = select(EnvironmentRow).where(EnvironmentRow.project_id == project_id)
    rows, cursor = await fetch_page(session, statement, EnvironmentRow.id, page)
    return Page(items=[environment_schema(r) for r in rows], next_cursor=cursor)


async def create_environment(
    session: AsyncSession,
    caller: Principal,
    org_id: str,
    project_id: str,
    data: EnvironmentCreate,
) -> Environment:
    await authorize(session, caller, org_id, Role.ADMIN)
    await get_project_row(session, org_id, project_id)
    await _ensure_name_free(session, project_id, data.name)
    row = EnvironmentRow(
        id=new_id("env"),
        org_id=org_id,
        project_id=project_id,
        name=data.name,
        **{name: _column_value(getattr(data, name)) for name in _SETTINGS},
    )
    session.add(row)
    await _commit_unique_name(session, data.name)
    return environment_schema(row)


async def get_environment(
    session: AsyncSession, caller: Principal, org_id: str, project_id: str, env_id: str
) -> Environment:
    await authorize(session, caller, org_id, Role.VIEWER)
    return environment_schema(await get_environment_row(session, org_id, project_id, env_id))


async def update_environment(
    session: AsyncSession,
    caller: Principal,
    org_id: str,
    project_id: str,
    env_id: str,
    data: EnvironmentUpdate,
) -> Environment:
    await authorize(session, caller, org_id, Role.ADMIN)
    row = await get_environment_row(session, org_id, project_id, env_id)
    if data.name is not UNSET and data.name != row.name:
        await _ensure_name_free(session, project_id, data.name, except_id=row.id)
        row.name = data.name
    for name in _SETTINGS:
        value = getattr(data, name)
        if value is not UNSET:
            setattr(row, name, _column_value(value))
    await _commit_unique_name(session, row.name)
    return environment_schema(row)


async def delete_environment(
    session: AsyncSession, caller: Principal, org_id: str, project_id: str, env_id: str
) -> None:
    """Delete the environment; the database cascades to every row under it."""
    await authorize(session, caller, org_id, Role.ADMIN)
    row = await get_environment_row(session, org_id, project_id, env_id)
    await session.delete(row)
    mark_changed(session, AGENT_KEYS, FLEET)  # cached keys go at once
    await session.commit()


@dataclass(frozen=True, slots=True)
class DesiredState:
    """What every agent of an environment should run: its current deployment's bundle."""

    deployment_id: str
    bundle_id: str
    bundle_digest: str


async def desired_state(
    session: AsyncSession, env_id: str, *, for_update: bool = False
) -> DesiredState | None:
    """The environment's desired state, or ``None`` before anything reached ``active``.

    ``for_update`` locks the environment row (PostgreSQL), so changes to the desired state of
    one environment happen one after another.
    """
    statement = select(
        EnvironmentRow.current_deployment_id,
        EnvironmentRow.desired_bundle_id,
        EnvironmentRow.desired_bundle_digest,
    ).where(EnvironmentRow.id == env_id)
    if for_update:
        statement = statement.with_for_update()
    row = (await session.execute(statement)).one_or_none()
    if row is None or row[0] is None or row[1] is None or row[2] is None:
        return None
    return DesiredState(deployment_id=row[0], bundle_id=row[1], bundle_digest=row[2])


async def set_desired_state(
    session: AsyncSession, env_id: str, desired: DesiredState | None
) -> None:
    """Record the environment's current deployment (no commit).

    Only the delivery domain calls this, from its lifecycle: when a deployment becomes
    ``active`` and when a rollback restores an earlier one.
    """
    mark_changed(session, FLEET)
    row = await session.get(EnvironmentRow, env_id)
    if row is None:
        raise NotFound(f"No environment {env_id}")
    row.current_deployment_id = desired.deployment_id if desired else None
    row.desired_bundle_id = desired.bundle_id if desired else None
    row.desired_bundle_digest = desired.bundle_digest if desired else None
