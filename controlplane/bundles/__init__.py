"""Config bundles: a pipeline version plus the environment's posture, built and signed."""

from __future__ import annotations

__all__: list[str] = []
