"""Projects: groups of environments inside an organization."""

from __future__ import annotations

__all__: list[str] = []
