"""Persistence: the async engine, the tables and the Alembic migrations."""

from __future__ import annotations

from controlplane.db.engine import Database, create_database
from controlplane.db.models import Base

__all__ = ["Base", "Database", "create_database"]
