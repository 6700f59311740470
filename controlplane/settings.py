"""Control plane settings, read from ``BYTEOR_CLOUD_*`` environment variables.

This is the only module of the control plane that reads the environment.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Literal, Self
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.roles import Role

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
    database_pool_size: Annotated[int, Field(ge=1, le=1000)] = Field(
        default=5, description="database connections each process keeps open"
    )
    database_pool_overflow: Annotated[int, Field(ge=0, le=1000)] = Field(
        default=10,
        description=(
            "extra connections a process may open under load, beyond the pool (on PostgreSQL "
            "they stay open once opened, so a steady load does not reconnect)"
        ),
    )
    database_pool_timeout_seconds: Annotated[float, Field(gt=0, le=300)] = Field(
        default=10.0,
        description=(
            "how long a request waits for a free connection before it is answered 503 with "
            "Retry-After"
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
    log_format: Literal["json", "text"] = Field(
        default="json", description="json (one object per line) or text (logfmt-like)"
    )
    drain_seconds: Annotated[float, Field(ge=0, le=300)] = Field(
        default=5.0,
        description="on SIGTERM, how long /readyz answers 503 before the server stops accepting",
    )
    http_keep_alive_seconds: Annotated[float, Field(gt=0, le=3600)] = Field(
        default=75.0,
        description=(
            "how long an idle HTTP/1.1 connection stays open; agents long-poll and heartbeat on "
            "kept-alive connections, and one closed while a host was busy costs a reconnect"
        ),
    )
    http_backlog: Annotated[int, Field(ge=16, le=65535)] = Field(
        default=4096,
        description="listen backlog: connections the kernel queues until accepted (capped by "
        "net.core.somaxconn); a fleet reconnecting at once must not find it full",
    )
    key_encryption_key: SecretStr | None = Field(
        default=None,
        description=(
            "base64url of 32 random bytes that encrypts signing keys at rest; default: a key file "
            "generated (0600) in the data dir, fine for one SQLite process"
        ),
    )
    key_rotation_overlap_seconds: Annotated[int, Field(ge=0, le=90 * 86400)] = Field(
        default=7 * 86400,
        description="how long a rotated-out signing key stays valid for verification",
    )
    agent_heartbeat_interval_seconds: Annotated[float, Field(ge=1, le=3600)] = Field(
        default=30.0, description="the heartbeat interval the control plane asks agents to use"
    )
    agent_stale_after_seconds: Annotated[float, Field(ge=1)] = Field(
        default=90.0, description="an agent without a heartbeat for this long is `stale`"
    )
    agent_offline_after_seconds: Annotated[float, Field(ge=1)] = Field(
        default=600.0, description="an agent without a heartbeat for this long is `offline`"
    )
    heartbeat_flush_seconds: Annotated[float, Field(gt=0, le=60)] = Field(
        default=2.0, description="heartbeats are coalesced in memory and written this often"
    )
    agent_key_cache_seconds: Annotated[float, Field(ge=0, le=5)] = Field(
        default=4.0,
        description=(
            "how long an authenticated agent key is served from memory without being re-read; "
            "a key revoked in any process stops working within this bound (0: no cache)"
        ),
    )
    agent_key_cache_size: Annotated[int, Field(ge=0, le=10_000_000)] = Field(
        default=50_000, description="most agent keys kept in the in-memory cache (LRU)"
    )
    gc_thresholds: Annotated[
        tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]
        | None,
        NoDecode,
    ] = Field(
        default=(50_000, 20, 20),
        description=(
            "garbage-collector thresholds of a serve or worker process, as `gen0,gen1,gen2` "
            "(Python's `gc.set_threshold`), or `python` for the interpreter's own (700,10,10). "
            "A fleet's in-flight long polls hold over a million objects; with Python's "
            "thresholds a full collection of them ran every few seconds under a rollout"
        ),
    )
    heartbeat_fast_lane: bool = Field(
        default=True,
        description=(
            "serve the usual heartbeat (cached key, small valid body) without the framework's "
            "per-request work; anything else takes the ordinary route either way"
        ),
    )
    fleet_view_ttl_seconds: Annotated[float, Field(ge=0, le=10)] = Field(
        default=1.0,
        description=(
            "how long an environment's heartbeat answer (deployment pending, key-set version, "
            "rotated keys) is kept; changes made by another process show within this bound"
        ),
    )
    rollout_timeout_seconds: Annotated[float, Field(ge=1)] = Field(
        default=900.0, description="a deployment not active this long after rollout starts fails"
    )
    build_timeout_seconds: Annotated[float, Field(ge=1)] = Field(
        default=900.0,
        description="an approved deployment whose bundle is not built this long after approval fails",
    )
    rollback_timeout_seconds: Annotated[float, Field(ge=1)] = Field(
        default=900.0,
        description=(
            "a rollback ends `rolled_back` this long after it starts, recording the targets "
            "that never confirmed as `unreachable` (they converge when they return)"
        ),
    )
    convergence_retry_seconds: Annotated[float, Field(ge=1)] = Field(
        default=30.0,
        description=(
            "after an agent fails to activate the desired bundle, wait this long before a fresh "
            "manifest (doubling per failure up to convergence_retry_max_seconds)"
        ),
    )
    convergence_retry_max_seconds: Annotated[float, Field(ge=1)] = Field(
        default=3600.0, description="the longest wait between two convergence retries"
    )
    manifest_ttl_seconds: Annotated[int, Field(ge=60)] = Field(
        default=3600, description="agents refuse a deployment manifest older than this (freeze)"
    )
    long_poll_max_seconds: Annotated[float, Field(ge=0, le=120)] = Field(
        default=30.0, description="longest ?wait= an agent may hold a deployment request open"
    )
    inflight_retry_after_seconds: Annotated[int, Field(ge=1)] = Field(
        default=30, description="Retry-After sent when the in-flight deployment cap is reached"
    )
    rate_limit_bearer: str = Field(
        default="600/minute", description="budget per API/session token (limits notation)"
    )
    rate_limit_agent: str = Field(
        default="120/minute",
        description="budget per agent key for heartbeats and other agent routes",
    )
    rate_limit_artifact_upload: str = Field(
        default="60/minute", description="budget per agent key for artifact uploads"
    )
    rate_limit_anonymous: str = Field(
        default="60/minute",
        description="budget per client address for unauthenticated calls and failed authentications",
    )
    rate_limit_enrollment: str = Field(
        default="30/minute", description="enrollments per environment (and failed ones per address)"
    )
    rate_limit_storage: str = Field(
        default="memory://",
        description="memory:// for one process; redis://host:6379/0 to share budgets across processes",
    )
    rate_limit_key_prefix: str = Field(
        default="byteor", description="namespace of the rate-limit keys in a shared Redis"
    )
    job_poll_interval_seconds: Annotated[float, Field(gt=0, le=60)] = Field(
        default=1.0, description="how often an idle worker looks for due jobs"
    )
    job_lease_seconds: Annotated[int, Field(ge=5, le=3600)] = Field(
        default=120, description="a claimed job not finished in this time is picked up again"
    )
    public_base_url: str | None = Field(
        default=None,
        description=(
            "the URL browsers use to reach this API, e.g. https://byteor.example.com; the OIDC "
            "callback is <public_base_url>/auth/callback. Cookies are Secure when it is https"
        ),
    )
    oidc_issuer: str | None = Field(
        default=None,
        description="OpenID Connect issuer URL (its /.well-known/openid-configuration is used); unset: login is off",
    )
    oidc_client_id: str | None = Field(
        default=None, description="client id registered with the OIDC provider"
    )
    oidc_client_secret: SecretStr | None = Field(
        default=None,
        description="client secret (client_secret_basic); unset for a public client using PKCE only",
    )
    oidc_scopes: str = Field(
        default="openid email profile",
        description="scopes requested at login (must include openid)",
    )
    oidc_allowed_email_domains: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "comma-separated e-mail domains whose people may sign in without an invitation "
            "(they get no organization until invited); invited people may always sign in"
        ),
    )
    oidc_allowed_emails: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated e-mail addresses that may sign in without an invitation",
    )
    oidc_auto_join_org_id: str | None = Field(
        default=None,
        description="an organization every newly signed-up person joins (default: none)",
    )
    oidc_auto_join_role: Role = Field(
        default=Role.VIEWER, description="the role given by oidc_auto_join_org_id"
    )
    oidc_clock_skew_seconds: Annotated[int, Field(ge=0, le=300)] = Field(
        default=60, description="tolerance when checking ID token exp/iat/nbf"
    )
    oidc_http_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = Field(
        default=10.0, description="timeout of each call to the OIDC provider"
    )
    oidc_discovery_ttl_seconds: Annotated[int, Field(ge=0, le=86400)] = Field(
        default=3600, description="how long the discovery document and JWKS are cached"
    )
    login_timeout_seconds: Annotated[int, Field(ge=30, le=3600)] = Field(
        default=600, description="how long a started login may take before its state expires"
    )
    session_ttl_seconds: Annotated[int, Field(ge=300, le=30 * 86400)] = Field(
        default=12 * 3600, description="lifetime of the session token issued at login"
    )

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

    @field_validator(
        "rate_limit_bearer",
        "rate_limit_agent",
        "rate_limit_artifact_upload",
        "rate_limit_anonymous",
        "rate_limit_enrollment",
    )
    @classmethod
    def _check_limit(cls, value: str) -> str:
        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit such as 600/minute: {exc}") from None
        return value

    @field_validator("gc_thresholds", mode="before")
    @classmethod
    def _parse_gc_thresholds(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.lower() == "python":
            return None
        parts = [part.strip() for part in text.split(",")]
        if len(parts) != 3 or not all(part.isdigit() for part in parts):
            raise ValueError("expected three positive integers `gen0,gen1,gen2`, or `python`")
        return tuple(int(part) for part in parts)

    @field_validator("rate_limit_storage")
    @classmethod
    def _check_storage(cls, value: str) -> str:
        if not value.startswith(("memory://", "redis://", "rediss://", "async+")):
            raise ValueError("use memory:// or redis://host:port/db")
        return value

    @field_validator("oidc_allowed_email_domains", "oidc_allowed_emails", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip().lower() for item in value.split(",") if item.strip()]
        if isinstance(value, list):
            return [str(item).strip().lower() for item in value if str(item).strip()]
        return value

    @field_validator("oidc_allowed_email_domains")
    @classmethod
    def _check_domains(cls, value: list[str]) -> list[str]:
        cleaned = [item.removeprefix("@") for item in value]
        for domain in cleaned:
            if "@" in domain or "." not in domain or any(c.isspace() for c in domain):
                raise ValueError(f"{domain!r} is not an e-mail domain such as example.com")
        return cleaned

    @field_validator("oidc_allowed_emails")
    @classmethod
    def _check_emails(cls, value: list[str]) -> list[str]:
        for email in value:
            local, at, domain = email.rpartition("@")
            if not at or not local or "." not in domain:
                raise ValueError(f"{email!r} is not an e-mail address")
        return value

    @field_validator("public_base_url", "oidc_issuer")
    @classmethod
    def _check_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip()
        if info.field_name == "public_base_url":
            value = value.rstrip("/")
        # The issuer is kept exactly as given: ID tokens must name it byte for byte (some
        # providers' issuers end in "/").
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("expected an absolute http(s) URL such as https://byteor.example.com")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value

    @field_validator("oidc_scopes")
    @classmethod
    def _check_scopes(cls, value: str) -> str:
        scopes = value.split()
        if "openid" not in scopes:
            raise ValueError("must include openid")
        return " ".join(scopes)

    @model_validator(mode="after")
    def _check_oidc(self) -> Self:
        wanted = {
            "BYTEOR_CLOUD_OIDC_ISSUER": self.oidc_issuer,
            "BYTEOR_CLOUD_OIDC_CLIENT_ID": self.oidc_client_id,
            "BYTEOR_CLOUD_PUBLIC_BASE_URL": self.public_base_url,
        }
        if self.oidc_issuer or self.oidc_client_id:
            missing = [name for name, value in wanted.items() if not value]
            if missing:
                raise ValueError(f"OIDC login needs {', '.join(missing)} as well")
        return self

    @field_validator("oidc_auto_join_role")
    @classmethod
    def _check_join_role(cls, value: Role) -> Role:
        if value is Role.OWNER:
            raise ValueError("people cannot join as owner automatically")
        return value

    @property
    def oidc_enabled(self) -> bool:
        """Whether OIDC login is configured (issuer, client id and public base URL set)."""
        return bool(self.oidc_issuer and self.oidc_client_id and self.public_base_url)

    @property
    def blob_dir(self) -> Path:
        """Where content-addressed blobs (bundle archives, artifacts) are stored."""
        return self.data_dir / "blobs"

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is the embedded SQLite default (or another SQLite file)."""
        return self.resolved_database_url.startswith("sqlite")

    @property
    def should_auto_migrate(self) -> bool:
        """Whether to migrate on start (explicit setting, else only for SQLite)."""
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate
