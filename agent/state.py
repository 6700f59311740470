"""The agent's durable state: identity, API key and pinned key set, in ``<state_dir>/agent.json``.

The file holds the agent's secret API key, so it is written ``0600`` in a ``0700`` directory and
always atomically: a temporary file in the same directory is written, flushed and fsynced, then
renamed over the target, and the directory is fsynced. A crash at any point leaves either the old
or the new file, never a mix, and no temporary file behind on ordinary errors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import stat
from datetime import datetime
from typing import TYPE_CHECKING, Final

import msgspec

from agent.errors import StateError
from shared.signing import Envelope, MalformedError, decode_keyset

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "STATE_FILE",
    "AgentState",
    "StateError",
    "ensure_state_dir",
    "load_state",
    "save_state",
    "state_path",
]

#: Name of the state file inside the state directory.
STATE_FILE: Final = "agent.json"
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700

logger = logging.getLogger(__name__)


class AgentState(msgspec.Struct, kw_only=True):
    """What the agent remembers across restarts (unknown fields are ignored on load).

    Attributes:
        agent_id: The agent's id.
        api_key: The agent's current API key (secret).
        org_id: Its organization.
        project_id: Its project.
        environment_id: Its environment.
        name: Its name.
        keyset: The pinned signed key set (see :func:`shared.signing.verify_keyset_update`).
        keyset_version: The version of ``keyset``.
        enrolled_at: When the agent enrolled.
        pending_api_key: A rotated key received but not yet confirmed in use (secret).
        last_sequence: The newest deployment manifest sequence the agent has acted on; older or
            equal sequences are refused as replays.
        active_deployment_id: The deployment whose bundle is active, if any.
        active_bundle_digest: The active bundle's digest (``sha256:<hex>``), if any.
        active_spec_hash: The active bundle's spec hash, if any.
        previous_bundle_digest: The bundle that was active before the current one, if any.
        identity_registered: Whether the control plane holds the agent's identity key.
    """

    agent_id: str
    api_key: str
    org_id: str
    project_id: str
    environment_id: str
    name: str
    keyset: Envelope
    keyset_version: int
    enrolled_at: datetime
    pending_api_key: str | None = None
    last_sequence: int = 0
    active_deployment_id: str | None = None
    active_bundle_digest: str | None = None
    active_spec_hash: str | None = None
    previous_bundle_digest: str | None = None
    #: Whether the control plane holds this agent's identity key (sent at enrollment, or
    #: registered before the first upload by agents on pre-provisioned credentials).
    identity_registered: bool = False

    def __repr__(self) -> str:
        """A representation without the secrets, safe to log."""
        pending = "None" if self.pending_api_key is None else "'***'"
        return (
            f"AgentState(agent_id={self.agent_id!r}, api_key='***', org_id={self.org_id!r}, "
            f"project_id={self.project_id!r}, environment_id={self.environment_id!r}, "
            f"name={self.name!r}, keyset_version={self.keyset_version}, "
            f"enrolled_at={self.enrolled_at.isoformat()!r}, pending_api_key={pending}, "
            f"last_sequence={self.last_sequence}, "
            f"active_deployment_id={self.active_deployment_id!r}, "
            f"active_bundle_digest={self.active_bundle_digest!r})"
        )


_DECODER: Final = msgspec.json.Decoder(AgentState)


def state_path(state_dir: Path) -> Path:
    """Return the path of the state file in ``state_dir``."""
    return state_dir / STATE_FILE


def ensure_state_dir(state_dir: Path) -> None:
    """Create the state directory 0700 (warn if an existing one is open to others).

    Call it before creating anything inside: ``Path.mkdir(parents=True)`` would create a missing
    state directory with the default, world-readable mode.
    """
    if state_dir.is_dir():
        mode = stat.S_IMODE(state_dir.stat().st_mode)
        if mode & 0o077:
            logger.warning(
                "state directory %s is accessible to other users (mode %o); expected 0700",
                state_dir,
                mode,
            )
        return
    state_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    state_dir.chmod(_DIR_MODE)  # mkdir's mode is masked by the umask


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_state(state_dir: Path, state: AgentState) -> Path:
    """Write ``state`` to ``<state_dir>/agent.json`` atomically, readable by the owner only.

    Creates ``state_dir`` (mode ``0700``) if it is missing. On failure the previous file, if any,
    is left untouched and the temporary file is removed.

    Args:
        state_dir: The agent's state directory.
        state: The state to persist.

    Returns:
        The path of the state file.

    Raises:
        OSError: If the directory or file cannot be written.
    """
    ensure_state_dir(state_dir)
    target = state_path(state_dir)
    temporary = state_dir / f".{STATE_FILE}.{secrets.token_hex(8)}.tmp"
    data = msgspec.json.format(msgspec.json.encode(state), indent=2) + b"\n"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(temporary, flags, _FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _FILE_MODE)  # independent of the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(target)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_dir(state_dir)
    logger.debug("saved agent state to %s", target)
    return target


def load_state(state_dir: Path) -> AgentState | None:
    """Read the state saved by :func:`save_state`.

    Args:
        state_dir: The agent's state directory.

    Returns:
        The state, or ``None`` if the agent has not enrolled (no state file).

    Raises:
        StateError: If the file cannot be read, is not valid state, or its key set is malformed.
    """
    path = state_path(state_dir)
    try:
        data = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read state file {path}: {exc.strerror or exc}") from exc
    if mode & 0o077:
        logger.warning("state file %s is readable by other users (mode %o)", path, mode)
    try:
        state = _DECODER.decode(data)
        decode_keyset(state.keyset)
    except (msgspec.MsgspecError, RecursionError, MalformedError) as exc:
        raise StateError(
            f"state file {path} is corrupt ({exc}); restore it or re-enroll the agent"
        ) from exc
    return state
