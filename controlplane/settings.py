"""Control plane settings, read from ``BYTEOR_CLOUD_*`` environment variables.

This is the only module of the control plane that reads the environment.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DeploymentMode", "Settings"]


class DeploymentMode(enum.StrEnum):
    """What a control-plane process runs: the API, the job workers, or both."""

    API = "api"
    WORKER = "worker"
    COMBINED = "combined"


class Settings(BaseSettings):
    """Everything an operator can set; see ``systemd/controlplane.env.example``."""

    model_config = SettingsConfigDict(
        env_prefix="BYTEOR_CLOUD_", env_file=None, extra="ignore", frozen=True
    )

    api_bind_addr: str = Field(
        default="127.0.0.1:8080",
        description="host:port the API listens on; `serve --host/--port` override it",
    )
    data_dir: Path = Field(
        default=Path("./byteor-data"),
        description="directory for the embedded SQLite database and the blob store",
    )
    database_url: str | None = Field(
        default=None,
        description=(
            "SQLAlchemy async URL; default SQLite in the data dir. "
            "Use postgresql+asyncpg://user@host/db for PostgreSQL"
        ),
    )
    auto_migrate: bool | None = Field(
        default=None,
        description="migrate the schema on start; default on for SQLite, off for PostgreSQL",
    )
    deployment_mode: DeploymentMode = Field(
        default=DeploymentMode.COMBINED,
        description="api, worker or combined: which parts this process runs",
    )
    max_request_body_bytes: Annotated[int, Field(ge=1024)] = Field(
        default=4 * 1024 * 1024, description="largest accepted API request body (413 beyond)"
    )
    page_size_default: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=50, description="list page size when ?limit= is not given"
    )
    page_size_max: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=200, description="largest accepted ?limit="
    )
    log_level: str = Field(default="info", description="debug, info, warning or error")

    @field_validator("api_bind_addr")
    @classmethod
    def _check_bind_addr(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("expected host:port, e.g. 127.0.0.1:8080")
        return value

    @property
    def bind_host(self) -> str:
        """Host part of :attr:`api_bind_addr` (brackets of an IPv6 literal removed)."""
        return self.api_bind_addr.rpartition(":")[0].strip("[]")

    @property
    def bind_port(self) -> int:
        """Port part of :attr:`api_bind_addr`."""
        return int(self.api_bind_addr.rpartition(":")[2])

    @property
    def resolved_database_url(self) -> str:
        """The database URL in use: the setting, or SQLite inside the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'byteor.db').resolve()}"

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is the embedded SQLite default (or another SQLite file)."""
        return self.resolved_database_url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        """Whether to migrate on start (explicit setting, else only for SQLite)."""
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate
