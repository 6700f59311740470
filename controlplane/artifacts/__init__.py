"""Artifacts: verified uploads from agents, incident bundle ingest, listing and download."""

from __future__ import annotations

__all__: list[str] = []
