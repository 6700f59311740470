"""Organizations, their members and service accounts, and role checks."""

from __future__ import annotations

__all__: list[str] = []
