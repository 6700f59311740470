"""Organization roles and the environment settings enums."""

from __future__ import annotations

import enum

__all__ = ["PrincipalKind", "Role", "RollbackPolicy", "TuningProfile"]


class Role(enum.StrEnum):
    """A member's role in an organization; each role includes every permission of those below it."""

    OWNER = "owner"
    ADMIN = "admin"
    DEPLOYER = "deployer"
    APPROVER = "approver"
    VIEWER = "viewer"

    @property
    def rank(self) -> int:
        """Higher is more powerful: owner 4 ... viewer 0."""
        return _RANKS[self]

    def at_least(self, other: Role) -> bool:
        """Tell whether this role includes the permissions of ``other``."""
        return self.rank >= other.rank


_RANKS = {Role.VIEWER: 0, Role.APPROVER: 1, Role.DEPLOYER: 2, Role.ADMIN: 3, Role.OWNER: 4}


class PrincipalKind(enum.StrEnum):
    """Whether a user is a person or a service account (CI, provisioning scripts)."""

    HUMAN = "human"
    SERVICE = "service"


class RollbackPolicy(enum.StrEnum):
    """What happens when a deployment fails: wait for an operator, or roll back at once."""

    MANUAL = "manual"
    AUTOMATIC = "automatic"


class TuningProfile(enum.StrEnum):
    """The runtime posture an environment asks its agents to run pipelines with."""

    DEFAULT = "default"
    LOW_LATENCY = "low-latency"
    ISOLATED_CORE = "isolated-core"
