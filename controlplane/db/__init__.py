"""Persistence: the async engine, the tables and the Alembic migrations."""

from __future__ import annotations

from controlplane.db.engine import (
    Database,
    ReadOnlyTransaction,
    begin_write,
    create_database,
    database_for,
    mark_changed,
)
from controlplane.db.models import Base

__all__ = [
    "Base",
    "Database",
    "ReadOnlyTransaction",
    "begin_write",
    "create_database",
    "database_for",
    "mark_changed",
]
