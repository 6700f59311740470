"""Approvals: the human decisions that gate deployments."""

from __future__ import annotations

__all__: list[str] = []
