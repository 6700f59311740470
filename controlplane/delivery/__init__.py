"""Delivery: deployments, their approvals, rollout targets and events, as one aggregate.

The environment holds the desired state (its current deployment and that deployment's bundle);
every agent of the environment converges to it whenever it checks in (:mod:`.convergence`).
A deployment moves through the lifecycle in :mod:`.lifecycle` (tables in :mod:`.states`); its
rollout issues signed manifests to the agents online when it starts (:mod:`.rollout`); every
status that waits for something has a deadline enforced by a job scheduled at that time
(:mod:`.deadlines`). Operators use :mod:`.routes`; agents use :mod:`.agent_routes`.

This package imports nothing at module level so that ``controlplane.db.models`` can use the enums
in :mod:`.states` without a cycle.
"""

from __future__ import annotations

__all__: list[str] = []
