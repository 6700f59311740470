"""The ByteOr control plane: a Litestar JSON REST API over the resource tree."""

from __future__ import annotations

__all__: list[str] = []
