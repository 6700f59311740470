"""Agents: enrollment tokens, enrollment, runtime keys, heartbeats and the agent routes."""

from __future__ import annotations

__all__: list[str] = []
