"""``EnvPath``: the ``org/project/environment`` a route addresses, resolved with a role check.

It sits next to :mod:`controlplane.orgs.access` because resolving a path *is* access control:
the caller's role in the organization is checked first, then that the environment sits under
the path (anything else is a 404, never a 403 that confirms it exists).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from controlplane.environments.service import get_environment_row
from controlplane.orgs.access import authorize

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from controlplane.auth.principal import Principal
    from controlplane.db.models import EnvironmentRow
    from shared.roles import Role

__all__ = ["EnvPath"]


class EnvPath:
    """The ``org/project/environment`` a request addresses."""

    __slots__ = ("env_id", "org_id", "project_id")

    def __init__(self, org_id: str, project_id: str, env_id: str) -> None:
        self.org_id = org_id
        self.project_id = project_id
        self.env_id = env_id

    async def resolve(
        self, session: AsyncSession, caller: Principal, minimum: Role
    ) -> EnvironmentRow:
        """Check the caller's role, then that the environment sits under this path."""
        await authorize(session, caller, self.org_id, minimum)
        return await get_environment_row(session, self.org_id, self.project_id, self.env_id)
