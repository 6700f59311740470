"""A durable on-disk spool of artifacts waiting to be uploaded, in ``<state_dir>/spool/``.

Layout::

    spool/<entry_id>.data     the artifact's bytes
    spool/<entry_id>.json     its :class:`SpoolEntry` (kind, digest, size, capture context, ...)
    spool/drops.json          entries dropped to stay within bounds, per kind, not yet reported
    spool/rejected/           entries the control plane refused for good (kept for a human)
    spool/.lock               serializes writers across processes (the daemon and the CLI)

Entry ids are ``<time_ns, 20 digits>-<random hex>``, so they sort by capture time. An entry is
written in two atomic steps: the data goes to a temporary file (hashed and counted while it is
copied, in constant memory), which is fsynced and renamed to ``.data``; only then is ``.json``
written the same way. An entry exists only when both files exist: a crash leaves at worst a
``.data`` without ``.json`` or a temporary file, and both are removed when the spool is opened.

Bounds: when adding an entry would exceed ``max_bytes`` or ``max_files``, the oldest ``telemetry``
entries are dropped first, then the oldest ``incident`` entries; the new entry itself is never
dropped, but one that alone exceeds ``max_bytes`` (or :data:`~shared.artifacts.MAX_ARTIFACT_BYTES`)
is refused with :class:`ArtifactTooLarge`. Every drop is counted per kind in ``drops.json``.

Outbox rule (:func:`outbox_kind`): a file dropped anywhere under ``<state_dir>/outbox/`` is an
``incident`` if its path inside the outbox starts with ``incident/`` or its name ends with
``.incident.tar.gz``; every other file is ``telemetry``. Names starting with ``.`` (files or
directories), symbolic links, non-regular files and files modified less than a second ago (still
being written) are skipped; write to a dot-name and rename when done to be safe.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import re
import secrets
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, cast

import msgspec

from shared.artifacts import ARTIFACT_KINDS, MAX_ARTIFACT_BYTES, ArtifactKind

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "DROPS_FILE",
    "REJECTED_DIR",
    "ArtifactTooLarge",
    "Spool",
    "SpoolEntry",
    "SpoolError",
    "outbox_kind",
]

DROPS_FILE: Final = "drops.json"
REJECTED_DIR: Final = "rejected"
_LOCK_FILE: Final = ".lock"
_TEMP_PREFIX: Final = ".tmp-"
_DATA: Final = ".data"
_META: Final = ".json"
_CHUNK: Final = 1024 * 1024
_FILE_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_MAX_FILENAME: Final = 255
_ENTRY_ID: Final = re.compile(r"^[0-9]{20}-[0-9a-f]{8}$")
_UNSAFE_NAME: Final = re.compile(r"[\x00-\x1f\x7f/\\]")
_INCIDENT_SUFFIX: Final = ".incident.tar.gz"

logger = logging.getLogger(__name__)


class SpoolError(Exception):
    """An artifact cannot be spooled."""


class ArtifactTooLarge(SpoolError):
    """The artifact alone exceeds the spool's byte bound or the upload limit; it was refused."""


class SpoolEntry(msgspec.Struct, kw_only=True):
    """One spooled artifact (the content of ``<entry_id>.json``).

    Attributes:
        entry_id: Sorts by capture time; names the entry's files.
        kind: ``incident`` or ``telemetry``.
        sha256: Hex SHA-256 of the data.
        size: Bytes of data.
        captured_at: When it was spooled (UTC).
        filename: The original file name (sanitized; sent with the upload).
        idempotency_key: Chosen once at spool time; the control plane answers a repeated upload
            with the stored artifact.
        deployment_id: The deployment active at capture time, if any.
        spec_hash: The spec hash active at capture time, if any.
        attempts: Upload attempts so far.
        rejected_reason: Why it was rejected (only in ``rejected/``).
    """

    entry_id: str
    kind: ArtifactKind
    sha256: str
    size: int
    captured_at: datetime
    filename: str
    idempotency_key: str
    deployment_id: str | None = None
    spec_hash: str | None = None
    attempts: int = 0
    rejected_reason: str | None = None


_ENTRY: Final = msgspec.json.Decoder(SpoolEntry)
_DROPS: Final = msgspec.json.Decoder(dict[str, int])


def outbox_kind(relative: Path) -> ArtifactKind:
    """The kind of a file found in the outbox (see the module docstring for the rule).

    Args:
        relative: The file's path relative to the outbox directory.

    Returns:
        ``incident`` for ``incident/...`` and ``*.incident.tar.gz``, else ``telemetry``.
    """
    if relative.parts[:1] == ("incident",) or relative.name.endswith(_INCIDENT_SUFFIX):
        return "incident"
    return "telemetry"


def _safe_filename(name: str) -> str:
    cleaned = _UNSAFE_NAME.sub("_", Path(name.replace("\\", "/")).name).strip()
    return cleaned[-_MAX_FILENAME:] if cleaned and cleaned not in {".", ".."} else "artifact"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_exclusive(path: Path) -> IO[bytes]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), _FILE_MODE)
    os.fchmod(fd, _FILE_MODE)
    return os.fdopen(fd, "wb")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` via a fsynced temporary file in the same directory and a rename."""
    temporary = path.parent / f"{_TEMP_PREFIX}{secrets.token_hex(8)}"
    try:
        with _open_exclusive(temporary) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        temporary.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    _fsync_dir(path.parent)


def _ensure_dir(directory: Path) -> None:
    if not directory.is_dir():
        directory.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
        directory.chmod(_DIR_MODE)


class Spool:
    """The spool directory; safe to use from several processes (writers take a file lock)."""

    def __init__(
        self,
        root: Path,
        max_bytes: int,
        max_files: int,
        *,
        max_entry_bytes: int = MAX_ARTIFACT_BYTES,
    ) -> None:
        """Open (creating if needed) the spool at ``root`` and clean up crash leftovers.

        Args:
            root: The spool directory (``<state_dir>/spool``).
            max_bytes: Most bytes of data kept; older entries are dropped to stay below.
            max_files: Most entries kept.
            max_entry_bytes: Largest single artifact accepted (the upload limit).

        Raises:
            ValueError: If a bound is not positive.
            OSError: If the directory cannot be created.
        """
        if max_bytes <= 0 or max_files <= 0 or max_entry_bytes <= 0:
            raise ValueError("spool bounds must be positive")
        self.root = root
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.max_entry_bytes = max_entry_bytes
        self._mutex = threading.Lock()
        self._cache: dict[str, SpoolEntry] = {}
        _ensure_dir(root)
        with self._locked():
            self._recover()

    def __repr__(self) -> str:
        return f"Spool(root={str(self.root)!r}, max_bytes={self.max_bytes}, max_files={self.max_files})"

    # --- paths -----------------------------------------------------------------------------------

    def data_path(self, entry_id: str) -> Path:
        """The data file of entry ``entry_id``."""
        return self.root / f"{entry_id}{_DATA}"

    def _meta_path(self, entry_id: str) -> Path:
        return self.root / f"{entry_id}{_META}"

    @property
    def rejected_dir(self) -> Path:
        """Where rejected entries are kept (``spool/rejected``)."""
        return self.root / REJECTED_DIR

    # --- locking and scanning --------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive access across processes (``flock``) and threads of this process."""
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.root / _LOCK_FILE, flags, _FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _recover(self) -> None:
        """Remove temporary files and half-written entries; quarantine unreadable metadata."""
        names = {path.name for path in self.root.iterdir()}
        for name in names:
            path = self.root / name
            if name.startswith(_TEMP_PREFIX):
                logger.info("removing leftover temporary file %s from the spool", name)
                path.unlink(missing_ok=True)
            elif name.endswith(_DATA) and name.removesuffix(_DATA) + _META not in names:
                logger.warning("removing half-written spool entry %s", name.removesuffix(_DATA))
                path.unlink(missing_ok=True)
            elif (
                name.endswith(_META)
                and name != DROPS_FILE
                and name.removesuffix(_META) + _DATA not in names
            ):
                logger.warning("removing spool metadata without data: %s", name)
                path.unlink(missing_ok=True)
        _fsync_dir(self.root)
        self._scan()

    def _scan(self) -> list[SpoolEntry]:
        """Refresh the cache from the directory (call with the lock held); oldest first."""
        ids = sorted(
            path.name.removesuffix(_META)
            for path in self.root.iterdir()
            if path.name.endswith(_META) and _ENTRY_ID.match(path.name.removesuffix(_META))
        )
        fresh: dict[str, SpoolEntry] = {}
        for entry_id in ids:
            entry = self._cache.get(entry_id)
            if entry is None:
                entry = self._read_entry(entry_id)
            if entry is not None:
                fresh[entry_id] = entry
        with self._mutex:
            self._cache = fresh
        return list(fresh.values())

    def _read_entry(self, entry_id: str) -> SpoolEntry | None:
        try:
            entry = _ENTRY.decode(self._meta_path(entry_id).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, msgspec.MsgspecError) as exc:
            logger.error("spool entry %s is unreadable (%s); rejecting it", entry_id, exc)  # noqa: TRY400
            self._quarantine(entry_id, None, f"unreadable metadata: {exc}")
            return None
        if not self.data_path(entry_id).exists():
            return None
        return entry

    # --- public API ------------------------------------------------------------------------------

    def entries(self) -> list[SpoolEntry]:
        """Every complete entry, oldest first (also those added by other processes)."""
        with self._locked():
            return self._scan()

    def stats(self) -> tuple[int, int]:
        """``(files, bytes)`` of the spool as of the last operation (no I/O)."""
        with self._mutex:
            return len(self._cache), sum(entry.size for entry in self._cache.values())

    def add(
        self,
        source: Path | bytes,
        kind: str,
        *,
        deployment_id: str | None = None,
        spec_hash: str | None = None,
        filename: str | None = None,
        move: bool = False,
    ) -> SpoolEntry:
        """Spool an artifact durably, dropping older entries if the bounds require it.

        Args:
            source: A file to copy (or move, see ``move``) or the bytes themselves.
            kind: ``incident`` or ``telemetry``.
            deployment_id: The deployment active at capture time.
            spec_hash: The spec hash active at capture time.
            filename: The name to upload under (default: the source file's name).
            move: Move ``source`` into the spool instead of copying it (files dropped in the
                outbox). A moved file that is refused lands in ``rejected/`` rather than being
                lost.

        Returns:
            The new entry.

        Raises:
            ValueError: If ``kind`` is not an artifact kind.
            ArtifactTooLarge: If the artifact alone exceeds the bounds (nothing was dropped).
            OSError: If the source cannot be read or the spool cannot be written.
        """
        if kind not in ARTIFACT_KINDS:
            raise ValueError(f"unknown artifact kind {kind!r}; expected one of {ARTIFACT_KINDS}")
        if filename is None:
            filename = source.name if isinstance(source, Path) else "artifact.bin"
        limit = min(self.max_bytes, self.max_entry_bytes)
        entry_id = f"{time.time_ns():020d}-{secrets.token_hex(4)}"
        temporary = self.root / f"{_TEMP_PREFIX}{entry_id}"
        with self._locked():
            moved = False
            try:
                if move and isinstance(source, Path):
                    moved = self._move_in(source, temporary)
                if moved:
                    sha256, size = self._hash_file(temporary, limit)
                else:
                    sha256, size = self._copy_in(source, temporary, limit)
            except ArtifactTooLarge as exc:
                if moved:
                    self._reject_file(temporary, entry_id, kind, filename, str(exc))
                else:
                    temporary.unlink(missing_ok=True)
                raise
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
            entry = SpoolEntry(
                entry_id=entry_id,
                kind=cast("ArtifactKind", kind),
                sha256=sha256,
                size=size,
                captured_at=datetime.now(UTC),
                filename=_safe_filename(filename),
                idempotency_key=str(uuid.uuid4()),
                deployment_id=deployment_id,
                spec_hash=spec_hash,
            )
            try:
                self._make_room(size)
                temporary.replace(self.data_path(entry_id))
                _fsync_dir(self.root)
                _write_atomic(self._meta_path(entry_id), msgspec.json.encode(entry))
            except BaseException:
                temporary.unlink(missing_ok=True)
                self.data_path(entry_id).unlink(missing_ok=True)
                raise
            with self._mutex:
                self._cache[entry_id] = entry
            if move and isinstance(source, Path) and not moved:
                source.unlink(missing_ok=True)  # copied across file systems
        logger.info(
            "spooled %s artifact %s (%s, %d bytes)", kind, entry_id, entry.filename, entry.size
        )
        return entry

    def remove(self, entry_id: str) -> None:
        """Delete an entry (metadata first, so a crash leaves only a ``.data`` to clean up)."""
        with self._locked():
            self._meta_path(entry_id).unlink(missing_ok=True)
            self.data_path(entry_id).unlink(missing_ok=True)
            _fsync_dir(self.root)
            with self._mutex:
                self._cache.pop(entry_id, None)

    def record_attempt(self, entry_id: str) -> SpoolEntry | None:
        """Count an upload attempt of ``entry_id`` (persisted); ``None`` if it is gone."""
        with self._locked():
            entry = self._cache.get(entry_id) or self._read_entry(entry_id)
            if entry is None:
                return None
            entry = msgspec.structs.replace(entry, attempts=entry.attempts + 1)
            _write_atomic(self._meta_path(entry_id), msgspec.json.encode(entry))
            with self._mutex:
                self._cache[entry_id] = entry
            return entry

    def reject(self, entry_id: str, reason: str) -> Path | None:
        """Move an entry to ``rejected/`` with ``reason``; returns its new data path."""
        with self._locked():
            target = self._quarantine(entry_id, self._cache.get(entry_id), reason)
            with self._mutex:
                self._cache.pop(entry_id, None)
            return target

    def drop_counts(self) -> dict[str, int]:
        """Entries dropped per kind since the counts were last taken (without resetting them)."""
        with self._locked():
            return self._read_drops()

    def take_drop_counts(self) -> dict[str, int]:
        """Return the drop counts and reset them (call once they have been reported)."""
        with self._locked():
            counts = self._read_drops()
            if any(counts.values()):
                self._write_drops({})
            return counts

    def acknowledge_drops(self, reported: dict[str, int]) -> None:
        """Subtract counts that were reported (drops counted meanwhile are kept)."""
        with self._locked():
            counts = self._read_drops()
            remaining = {k: max(0, v - reported.get(k, 0)) for k, v in counts.items()}
            self._write_drops(remaining)

    def ingest_outbox(
        self,
        outbox: Path,
        kind_for: Callable[[Path], str] = outbox_kind,
        *,
        deployment_id: str | None = None,
        spec_hash: str | None = None,
        min_age_seconds: float = 1.0,
    ) -> list[SpoolEntry]:
        """Move the finished files found under ``outbox`` into the spool.

        Args:
            outbox: The outbox directory (missing is fine: nothing to do).
            kind_for: Maps a file's path relative to ``outbox`` to its kind
                (default :func:`outbox_kind`).
            deployment_id: The deployment active now (recorded as the capture context).
            spec_hash: The spec hash active now.
            min_age_seconds: Files modified more recently are assumed still being written.

        Returns:
            The new entries. Files refused as too large are moved to ``rejected/``; files that
            cannot be read are left in place and logged.
        """
        if not outbox.is_dir():
            return []
        cutoff = time.time() - min_age_seconds
        added: list[SpoolEntry] = []
        for directory, subdirs, files in os.walk(outbox):
            subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
            for name in sorted(files):
                path = Path(directory) / name
                if name.startswith("."):
                    continue
                try:
                    info = path.lstat()
                except OSError:
                    continue
                if not path.is_file() or path.is_symlink():
                    logger.warning("skipping %s in the outbox: not a regular file", path)
                    continue
                if info.st_mtime > cutoff:
                    continue
                relative = path.relative_to(outbox)
                kind = kind_for(relative)
                if kind not in ARTIFACT_KINDS:
                    logger.warning(
                        "outbox file %s: unknown kind %r; treating as telemetry", relative, kind
                    )
                    kind = "telemetry"
                try:
                    added.append(
                        self.add(
                            path,
                            kind,
                            deployment_id=deployment_id,
                            spec_hash=spec_hash,
                            move=True,
                        )
                    )
                except ArtifactTooLarge as exc:
                    logger.error("outbox file %s refused: %s", relative, exc)  # noqa: TRY400
                except OSError as exc:
                    logger.warning("cannot spool outbox file %s: %s", relative, exc)
        return added

    # --- internals (lock held) -------------------------------------------------------------------

    def _move_in(self, source: Path, temporary: Path) -> bool:
        """Rename ``source`` to ``temporary``; ``False`` if they are on different file systems."""
        if source.is_symlink() or not source.is_file():
            raise OSError(f"{source} is not a regular file")
        try:
            source.rename(temporary)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return False
            raise
        return True

    @staticmethod
    def _too_large(size: int, limit: int) -> ArtifactTooLarge:
        return ArtifactTooLarge(
            f"artifact of {size}+ bytes exceeds the limit of {limit} bytes "
            "(the spool's max bytes or the upload limit)"
        )

    def _copy_in(self, source: Path | bytes, temporary: Path, limit: int) -> tuple[str, int]:
        hasher = hashlib.sha256()
        size = 0
        with _open_exclusive(temporary) as sink:
            if isinstance(source, bytes):
                if len(source) > limit:
                    raise self._too_large(len(source), limit)
                hasher.update(source)
                sink.write(source)
                size = len(source)
            else:
                flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
                with os.fdopen(os.open(source, flags), "rb") as reader:
                    while chunk := reader.read(_CHUNK):
                        size += len(chunk)
                        if size > limit:
                            raise self._too_large(size, limit)
                        hasher.update(chunk)
                        sink.write(chunk)
            sink.flush()
            os.fsync(sink.fileno())
        return hasher.hexdigest(), size

    def _hash_file(self, path: Path, limit: int) -> tuple[str, int]:
        size = path.stat().st_size
        if size > limit:
            raise self._too_large(size, limit)
        hasher = hashlib.sha256()
        with path.open("rb") as reader:
            while chunk := reader.read(_CHUNK):
                hasher.update(chunk)
            os.fsync(reader.fileno())  # it was written by someone else: make it durable
        return hasher.hexdigest(), size

    def _make_room(self, size: int) -> None:
        """Drop the oldest telemetry, then the oldest incidents, until ``size`` more bytes fit."""
        entries = self._scan()
        total = sum(entry.size for entry in entries)
        count = len(entries)
        victims = [e for e in entries if e.kind == "telemetry"] + [
            e for e in entries if e.kind != "telemetry"
        ]
        dropped: dict[str, int] = {}
        for victim in victims:
            if count + 1 <= self.max_files and total + size <= self.max_bytes:
                break
            self._meta_path(victim.entry_id).unlink(missing_ok=True)
            self.data_path(victim.entry_id).unlink(missing_ok=True)
            with self._mutex:
                self._cache.pop(victim.entry_id, None)
            count -= 1
            total -= victim.size
            dropped[victim.kind] = dropped.get(victim.kind, 0) + 1
            logger.warning(
                "spool full: dropped %s artifact %s (%d bytes)",
                victim.kind,
                victim.entry_id,
                victim.size,
            )
        if dropped:
            counts = self._read_drops()
            for kind, number in dropped.items():
                counts[kind] = counts.get(kind, 0) + number
            self._write_drops(counts)

    def _read_drops(self) -> dict[str, int]:
        try:
            counts = _DROPS.decode((self.root / DROPS_FILE).read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, msgspec.MsgspecError) as exc:
            logger.warning("drop counter %s is unreadable (%s); restarting it", DROPS_FILE, exc)
            return {}
        return {kind: number for kind, number in counts.items() if number > 0}

    def _write_drops(self, counts: dict[str, int]) -> None:
        kept = {kind: number for kind, number in sorted(counts.items()) if number > 0}
        _write_atomic(self.root / DROPS_FILE, msgspec.json.encode(kept))

    def _quarantine(self, entry_id: str, entry: SpoolEntry | None, reason: str) -> Path | None:
        rejected = self.rejected_dir
        _ensure_dir(rejected)
        data = self.data_path(entry_id)
        if entry is not None:
            entry = msgspec.structs.replace(entry, rejected_reason=reason)
            _write_atomic(rejected / f"{entry_id}{_META}", msgspec.json.encode(entry))
        else:
            _write_atomic(
                rejected / f"{entry_id}.reason", reason.encode("utf-8", "replace") + b"\n"
            )
            meta = self._meta_path(entry_id)
            if meta.exists():
                meta.replace(rejected / f"{entry_id}{_META}")
        target: Path | None = None
        if data.exists():
            target = rejected / f"{entry_id}{_DATA}"
            data.replace(target)
        self._meta_path(entry_id).unlink(missing_ok=True)
        _fsync_dir(rejected)
        _fsync_dir(self.root)
        return target

    def _reject_file(
        self, temporary: Path, entry_id: str, kind: str, filename: str, reason: str
    ) -> None:
        """Keep a moved-in file that was refused in ``rejected/`` (it must not be lost)."""
        rejected = self.rejected_dir
        _ensure_dir(rejected)
        temporary.replace(rejected / f"{entry_id}{_DATA}")
        note = {"entry_id": entry_id, "kind": kind, "filename": filename, "rejected_reason": reason}
        _write_atomic(rejected / f"{entry_id}{_META}", msgspec.json.encode(note))
        _fsync_dir(self.root)
