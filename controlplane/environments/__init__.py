"""Environments: deployment targets inside a project, with their governance settings."""

from __future__ import annotations

__all__: list[str] = []
