"""Deployments: the approval-gated lifecycle, rollouts to agents, rollbacks."""

from __future__ import annotations

__all__: list[str] = []
