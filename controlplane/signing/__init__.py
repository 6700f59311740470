"""Organization signing keys: sealed at rest, rotated with an overlap, published as signed key sets."""

from __future__ import annotations

__all__: list[str] = []
