"""The agent's configuration: ``BYTEOR_*`` environment variables and an optional env file.

Environment variables win over the env file, and explicit keyword arguments win over both.
Empty values (``BYTEOR_AGENT_ID=``) count as unset, so a systemd ``EnvironmentFile`` may list
every variable.

Run as ``python -m agent.settings [--env-file F]``, this module is the settings helper of
``byteor-agent run`` (see :mod:`agent.config`): it validates the settings and writes them to
stdout as JSON, or prints what is wrong to stderr and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agent.config import AgentConfig, Secret, encode_config

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "DEFAULT_SPEC",
    "DEFAULT_STATE_DIR",
    "AgentSettings",
    "LocalSettings",
    "describe_error",
    "main",
]

DEFAULT_STATE_DIR = Path("/var/lib/byteor-agent")
DEFAULT_SPEC = Path("/etc/byteor/spec.kv")


class AgentSettings(BaseSettings):
    """Settings of the agent daemon, read from ``BYTEOR_*`` variables (see :meth:`from_env`)."""

    model_config = SettingsConfigDict(
        env_prefix="BYTEOR_",
        env_file=None,
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
    )

    api_base_url: str = Field(
        description="Base URL of the control plane (http or https), e.g. https://cp.example.com."
    )
    agent_id: str | None = Field(
        default=None, description="This agent's id; set by enrollment if absent."
    )
    agent_api_key: SecretStr | None = Field(
        default=None, description="This agent's runtime API key; set by enrollment if absent."
    )
    enrollment_token: SecretStr | None = Field(
        default=None, description="One-time enrollment token used to enroll this host."
    )
    org_id: str | None = Field(default=None, description="Organization to enroll into.")
    project_id: str | None = Field(default=None, description="Project to enroll into.")
    environment_id: str | None = Field(default=None, description="Environment to enroll into.")
    agent_name: str | None = Field(
        default=None, description="Name to enroll under (defaults to the hostname server-side)."
    )
    state_dir: Path = Field(
        default=DEFAULT_STATE_DIR,
        description="Directory holding the agent's private state (agent.json).",
    )
    spec: Path = Field(default=DEFAULT_SPEC, description="Path of the pipeline spec to run.")
    activation_command: str | None = Field(
        default=None, description="Command run to activate a newly deployed bundle."
    )
    health_check_command: str | None = Field(
        default=None, description="Command whose exit status tells whether the pipeline is healthy."
    )
    heartbeat_interval_seconds: float = Field(
        default=30.0,
        ge=1,
        description="Seconds between heartbeats until the control plane suggests another interval.",
    )
    http_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Timeout of each HTTP request to the control plane."
    )
    max_retry_attempts: int = Field(
        default=6, ge=1, description="Most attempts (first try included) of one control plane call."
    )
    max_backoff_seconds: float = Field(
        default=60.0, gt=0, description="Upper bound of the jittered exponential backoff."
    )
    max_bundle_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        description="Largest config bundle archive (bytes) the agent downloads; more is refused.",
    )
    deployment_wait_seconds: float = Field(
        default=25.0,
        ge=0,
        description="How long one deployment long-poll may wait on the control plane (seconds).",
    )
    health_check_timeout_seconds: float = Field(
        default=30.0, gt=0, description="Timeout of the health check command of a candidate bundle."
    )
    activation_timeout_seconds: float = Field(
        default=60.0, gt=0, description="Timeout of the activation command of a new bundle."
    )
    spool_max_bytes: int = Field(
        default=512 * 1024 * 1024,
        gt=0,
        description="Most bytes of artifacts kept in the upload spool; the oldest are dropped.",
    )
    spool_max_files: int = Field(
        default=10_000, gt=0, description="Most artifacts kept in the upload spool."
    )
    upload_interval_seconds: float = Field(
        default=10.0, ge=1, description="Seconds between artifact upload rounds."
    )
    crash_after_step: str | None = Field(
        default=None,
        description=(
            "Fault-injection hook for tests only (BYTEOR_CRASH_AFTER_STEP): after journaling this "
            "activation step (verified, downloaded, unpacked, validated, health_checked, switched, "
            "activated) the process calls os._exit(86). Never set it in production."
        ),
    )

    @field_validator("api_base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        url = value.strip().rstrip("/")
        parts = urlsplit(url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not have a query or fragment")
        return url

    def config(self) -> AgentConfig:
        """The validated values as the daemon holds them (no pydantic needed to use them)."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        for name in ("agent_api_key", "enrollment_token"):
            secret = values[name]
            values[name] = None if secret is None else Secret(secret.get_secret_value())
        return AgentConfig(**values)

    @classmethod
    def from_env(cls, env_file: Path | None = None) -> AgentSettings:
        """Load settings from the environment and, if given, an env file.

        Args:
            env_file: A ``KEY=value`` file of ``BYTEOR_*`` variables; the environment wins over it.

        Returns:
            The validated settings.

        Raises:
            pydantic.ValidationError: If a value is missing or invalid.
        """
        return cls(_env_file=env_file)


class LocalSettings(BaseSettings):
    """The settings ``byteor-agent status`` needs: only where the state lives (no server URL)."""

    model_config = SettingsConfigDict(
        env_prefix="BYTEOR_", env_file=None, env_ignore_empty=True, extra="ignore"
    )

    state_dir: Path = Field(
        default=DEFAULT_STATE_DIR,
        description="Directory holding the agent's private state (agent.json).",
    )

    spool_max_bytes: int = Field(
        default=512 * 1024 * 1024, gt=0, description="Most bytes kept in the upload spool."
    )
    spool_max_files: int = Field(default=10_000, gt=0, description="Most artifacts spooled.")

    @classmethod
    def from_env(cls, env_file: Path | None = None) -> LocalSettings:
        """Load from the environment and, if given, an env file (the environment wins)."""
        return cls(_env_file=env_file)


def describe_error(exc: ValidationError) -> str:
    """What ``byteor-agent`` prints for settings that are missing or invalid."""
    fields = ", ".join(
        "BYTEOR_" + str(error["loc"][0]).upper() for error in exc.errors() if error["loc"]
    )
    return f"byteor-agent: invalid or missing settings: {fields}\n{exc}"


def main(argv: Sequence[str] | None = None) -> int:
    """The settings helper: validated settings to stdout as JSON (exit 0), or errors (exit 2)."""
    parser = argparse.ArgumentParser(
        prog="python -m agent.settings",
        description="Validate the BYTEOR_* settings and write them to stdout as JSON.",
    )
    parser.add_argument("--env-file", type=Path, help="a file of BYTEOR_* variables to read too")
    args = parser.parse_args(argv)
    try:
        config = AgentSettings.from_env(args.env_file).config()
    except ValidationError as exc:
        print(describe_error(exc), file=sys.stderr)  # noqa: T201
        return 2
    sys.stdout.buffer.write(encode_config(config))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
