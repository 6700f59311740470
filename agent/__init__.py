"""The ByteOr agent: the daemon that runs on every managed host."""

from __future__ import annotations

__all__: list[str] = []
