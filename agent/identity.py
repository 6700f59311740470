"""The agent's own Ed25519 signing key: it signs the metadata of every artifact it uploads.

The key is generated at first need (before enrollment, which registers its public half with the
control plane) and kept in ``<state_dir>/agent_signing.key`` as the raw 32-byte private key, mode
``0600``. It is created exactly once: the new key is written to a temporary file, fsynced, and
hard-linked into place, which fails if another process created the file first (then that key is
used). A key file that exists but is unreadable or malformed is an error, never silently replaced:
the control plane would no longer accept the agent's signatures.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
import stat
from typing import TYPE_CHECKING, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.errors import StateError

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["IDENTITY_FILE", "identity_path", "load_or_create_identity", "public_key_b64"]

#: Name of the key file inside the state directory.
IDENTITY_FILE: Final = "agent_signing.key"
_KEY_BYTES: Final = 32
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700

logger = logging.getLogger(__name__)


def identity_path(state_dir: Path) -> Path:
    """Return the path of the agent's signing key in ``state_dir``."""
    return state_dir / IDENTITY_FILE


def _read_key(path: Path) -> Ed25519PrivateKey:
    try:
        raw = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise StateError(
            f"cannot read the agent signing key {path}: {exc.strerror or exc}"
        ) from exc
    if mode & 0o077:
        logger.warning("agent signing key %s is readable by other users (mode %o)", path, mode)
    if len(raw) != _KEY_BYTES:
        raise StateError(
            f"agent signing key {path} is corrupt (expected {_KEY_BYTES} bytes); restore it or "
            "re-enroll the agent"
        )
    return Ed25519PrivateKey.from_private_bytes(raw)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_or_create_identity(state_dir: Path) -> Ed25519PrivateKey:
    """The agent's signing key, generated and stored (``0600``, atomically) if there is none.

    Args:
        state_dir: The agent's state directory (created with mode ``0700`` if missing).

    Returns:
        The agent's Ed25519 private key.

    Raises:
        StateError: If the key file exists but cannot be read or is malformed.
        OSError: If a new key cannot be written.
    """
    path = identity_path(state_dir)
    if path.exists():
        return _read_key(path)
    if not state_dir.is_dir():
        state_dir.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        state_dir.chmod(_DIR_MODE)
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes_raw()
    temporary = state_dir / f".{IDENTITY_FILE}.{secrets.token_hex(8)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(temporary, flags, _FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), _FILE_MODE)
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # never replaces a key another process just created
        except FileExistsError:
            return _read_key(path)
    finally:
        with contextlib.suppress(OSError):
            temporary.unlink()
    _fsync_dir(state_dir)
    logger.info("generated the agent signing key %s", path)
    return key


def public_key_b64(key: Ed25519PrivateKey) -> str:
    """The raw 32-byte public key of ``key``, base64url without padding (as enrollment sends it)."""
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
