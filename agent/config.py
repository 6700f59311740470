"""The daemon's validated configuration, as a plain msgspec Struct (no pydantic in the daemon).

``BYTEOR_*`` variables are read and validated by :class:`agent.settings.AgentSettings`
(pydantic-settings). pydantic and pydantic-settings cost about 9 MiB of resident memory in a
process that imports them, on every host, for as long as the daemon runs, though they are needed
only for the fraction of a second it takes to read the settings. So ``byteor-agent run`` reads
them in a short-lived helper process (``python -m agent.settings``, see :func:`load_config`), which
writes the validated values to a pipe as JSON; the daemon decodes them into :class:`AgentConfig`
and never imports pydantic. The helper prints the same messages for bad settings as an in-process
read would, and exits 2; :func:`load_config` raises :class:`SettingsError` with them.

:class:`AgentConfig` has exactly the fields of ``AgentSettings`` (a test keeps them in step);
the two secrets are :class:`Secret`, which never shows its value in ``repr`` or ``str``.
"""

from __future__ import annotations

import hmac
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec

from agent.errors import AgentError

__all__ = [
    "AgentConfig",
    "Secret",
    "SettingsError",
    "decode_config",
    "encode_config",
    "load_config",
]

#: Longest the settings helper may take (it imports pydantic and reads a few variables).
HELPER_TIMEOUT_SECONDS = 60.0


class Secret:
    """A secret string that does not show itself in ``repr``, ``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        """The secret itself."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True):
    """The agent daemon's settings once validated (see :class:`agent.settings.AgentSettings`
    for what each one means and its bounds)."""

    api_base_url: str
    agent_id: str | None = None
    agent_api_key: Secret | None = None
    enrollment_token: Secret | None = None
    org_id: str | None = None
    project_id: str | None = None
    environment_id: str | None = None
    agent_name: str | None = None
    state_dir: Path = Path("/var/lib/byteor-agent")
    spec: Path = Path("/etc/byteor/spec.kv")
    activation_command: str | None = None
    health_check_command: str | None = None
    heartbeat_interval_seconds: float = 30.0
    http_timeout_seconds: float = 10.0
    max_retry_attempts: int = 6
    max_backoff_seconds: float = 60.0
    max_bundle_bytes: int = 64 * 1024 * 1024
    deployment_wait_seconds: float = 25.0
    health_check_timeout_seconds: float = 30.0
    activation_timeout_seconds: float = 60.0
    spool_max_bytes: int = 512 * 1024 * 1024
    spool_max_files: int = 10_000
    upload_interval_seconds: float = 10.0
    crash_after_step: str | None = None


class SettingsError(AgentError):
    """The ``BYTEOR_*`` settings are missing or invalid (the message says which and why)."""


def _enc_hook(value: Any) -> Any:
    if isinstance(value, Secret):
        return value.get_secret_value()
    if isinstance(value, Path):
        return str(value)
    # msgspec's hook protocol: this error means "a type the hook does not handle".
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Secret and isinstance(value, str):
        return Secret(value)
    if kind is Path and isinstance(value, str):
        return Path(value)
    # msgspec's hook protocol: this error means "a type the hook does not handle".
    raise NotImplementedError(f"cannot decode {kind!r}")


def encode_config(config: AgentConfig) -> bytes:
    """JSON of ``config``, secrets included (for the pipe from the settings helper only)."""
    return msgspec.json.encode(config, enc_hook=_enc_hook)


def decode_config(data: bytes) -> AgentConfig:
    """The :class:`AgentConfig` that :func:`encode_config` wrote."""
    return msgspec.json.decode(data, type=AgentConfig, dec_hook=_dec_hook)


def load_config(env_file: Path | None = None) -> AgentConfig:
    """Read and validate the settings in a helper process; this one never imports pydantic.

    The helper inherits this process's environment, so it reads the same ``BYTEOR_*`` variables
    (and ``env_file``, if given) that :meth:`AgentSettings.from_env` would here.

    Raises:
        SettingsError: The settings are missing or invalid, or the helper could not run.
    """
    command = [sys.executable, "-m", "agent.settings"]
    if env_file is not None:
        command += ["--env-file", os.fspath(env_file)]
    try:
        done = subprocess.run(  # noqa: S603 - our own interpreter and module
            command, capture_output=True, timeout=HELPER_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SettingsError(f"could not read the settings: {exc}") from None
    if done.returncode != 0:
        message = done.stderr.decode("utf-8", "replace").strip()
        raise SettingsError(message or f"the settings helper exited with {done.returncode}")
    try:
        return decode_config(done.stdout)
    except msgspec.DecodeError as exc:  # pragma: no cover - the helper wrote it
        raise SettingsError(f"the settings helper wrote something unreadable: {exc}") from None
