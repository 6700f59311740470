"""What ``byteor-agent status`` shows: the daemon writes ``status.json`` after every heartbeat."""

from __future__ import annotations

import contextlib
import secrets
from datetime import datetime
from typing import TYPE_CHECKING, Final

import msgspec

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["STATUS_FILE", "RuntimeStatus", "read_status", "write_status"]

STATUS_FILE: Final = "status.json"


class RuntimeStatus(msgspec.Struct, kw_only=True):
    """The daemon's view of itself (no secrets)."""

    pid: int
    started_at: datetime
    state: str = "starting"
    last_heartbeat_at: datetime | None = None
    last_heartbeat_ok: bool | None = None
    last_error: str | None = None
    heartbeat_interval_seconds: float | None = None
    keyset_version: int = 0
    active_deployment_id: str | None = None
    active_bundle_digest: str | None = None
    spool_files: int = 0
    spool_bytes: int = 0
    #: Artifacts dropped from the full spool, per kind, not yet reported to the control plane.
    dropped_artifacts: dict[str, int] = msgspec.field(default_factory=dict)


def write_status(state_dir: Path, status: RuntimeStatus) -> None:
    """Replace ``status.json`` atomically (readers never see half a file)."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = state_dir / f".{STATUS_FILE}.{secrets.token_hex(6)}.tmp"
    try:
        temporary.write_bytes(msgspec.json.encode(status))
        temporary.replace(state_dir / STATUS_FILE)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def read_status(state_dir: Path) -> RuntimeStatus | None:
    """The last status the daemon wrote, or ``None`` if it never ran or the file is unreadable."""
    try:
        return msgspec.json.decode((state_dir / STATUS_FILE).read_bytes(), type=RuntimeStatus)
    except (OSError, msgspec.MsgspecError):
        return None
