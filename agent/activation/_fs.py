"""Crash-safe file operations: atomic replace, symlink switch, the journal and outcome files."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
from typing import TYPE_CHECKING, Final, TypeVar

import msgspec

from agent.activation._model import ActivationOutcome, Journal

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "JOURNAL_FILE",
    "OUTCOME_FILE",
    "clear_file",
    "fsync_dir",
    "point_link",
    "read_record",
    "remove_link",
    "remove_tree",
    "write_atomic",
    "write_record",
]

#: The activation journal, in the state directory.
JOURNAL_FILE: Final = "activation.json"
#: The last outcome not yet confirmed delivered to the control plane, in the state directory.
OUTCOME_FILE: Final = "deployment_outcome.json"

_T = TypeVar("_T", Journal, ActivationOutcome)
_PRIVATE: Final = 0o600

logger = logging.getLogger("byteor.agent.activation")


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (renames, new files) durable."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = _PRIVATE) -> None:
    """Replace ``path`` with ``data``: a same-directory temp file is fsynced then renamed over it.

    Parent directories are created. On failure ``path`` is unchanged and the temp file removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(temporary, flags, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # independent of the umask
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    fsync_dir(path.parent)


def point_link(link: Path, target: str) -> None:
    """Atomically make ``link`` a symlink to ``target`` (a temp link renamed over it)."""
    temporary = link.with_name(f".{link.name}.{secrets.token_hex(6)}.tmp")
    temporary.symlink_to(target)
    try:
        temporary.replace(link)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    fsync_dir(link.parent)


def remove_link(path: Path) -> None:
    """Remove a file or symlink (not a directory) if present, durably."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_dir(path.parent)


def remove_tree(path: Path) -> None:
    """Remove a directory tree (or a file or link) if present; errors are logged, not raised."""
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)
    except OSError as exc:
        logger.warning("could not remove %s: %s", path, exc)


def write_record(path: Path, record: Journal | ActivationOutcome) -> None:
    """Write a journal or outcome record atomically, mode ``0600``."""
    write_atomic(path, msgspec.json.encode(record) + b"\n")


def read_record(path: Path, kind: type[_T]) -> _T | None:
    """Read a record written by :func:`write_record`; ``None`` if absent or unreadable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        logger.error("cannot read %s: %s", path, exc)  # noqa: TRY400 - no traceback wanted
        return None
    try:
        return msgspec.json.decode(data, type=kind)
    except (msgspec.MsgspecError, RecursionError) as exc:
        logger.error("%s is corrupt and is ignored: %s", path, exc)  # noqa: TRY400
        return None


def clear_file(path: Path) -> None:
    """Remove a record file if present, durably."""
    remove_link(path)
