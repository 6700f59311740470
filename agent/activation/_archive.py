"""Checking and unpacking bundle archives without trusting them.

The archive's digest is checked against the signed manifest before it is opened, so everything
here is defence in depth against a buggy or compromised control plane: the gzip stream is
decompressed once with a bound before :mod:`tarfile` sees it, every member is checked by hand
(only top-level regular files of the expected names, each once, within size bounds) and written
by the agent itself with ``O_EXCL | O_NOFOLLOW`` (``tarfile`` never extracts anything).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
import zlib
from typing import IO, TYPE_CHECKING, Final

import msgspec

from agent.activation._fs import fsync_dir, remove_tree
from agent.activation._model import ActivationRefused
from shared.bundle import BUNDLE_FORMAT, BundleManifest
from shared.spec import spec_hash, validate_spec_kv

if TYPE_CHECKING:
    from pathlib import Path

    from shared.deployments import ManifestPayload

__all__ = [
    "BUNDLE_FILES",
    "MANIFEST_NAME",
    "SPEC_NAME",
    "check_bundle_dir",
    "file_sha256",
    "unpack_archive",
    "validate_bundle",
]

MANIFEST_NAME: Final = "manifest.json"
SPEC_NAME: Final = "spec.kv"
RUNTIME_CONFIG_NAME: Final = "runtime_config.json"
#: The files of a bundle, exactly.
BUNDLE_FILES: Final = frozenset({MANIFEST_NAME, SPEC_NAME, RUNTIME_CONFIG_NAME})
#: Largest manifest.json accepted (it lists two files).
MAX_MANIFEST_BYTES: Final = 1024 * 1024
#: Total uncompressed size accepted, as a multiple of ``max_bundle_bytes``.
EXPANSION_FACTOR: Final = 4
_CHUNK: Final = 1 << 16
_FILE_MODE: Final = 0o644
_DIR_MODE: Final = 0o755


def _refuse(reason: str, message: str) -> ActivationRefused:
    return ActivationRefused(reason, message)


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _file_limit(name: str, max_bundle_bytes: int) -> int:
    return MAX_MANIFEST_BYTES if name == MANIFEST_NAME else max_bundle_bytes


def _check_gzip(archive: Path, bound: int) -> None:
    """Decompress once, counting: refuse bombs and corrupt streams before tarfile reads them."""
    total = 0
    try:
        with gzip.open(archive, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                total += len(chunk)
                if total > bound:
                    raise _refuse(
                        "unsafe_archive", f"the archive decompresses to more than {bound} bytes"
                    )
    except (OSError, EOFError, zlib.error) as exc:
        raise _refuse("corrupt_archive", f"not a readable gzip stream: {exc}") from exc


def _check_member(member: tarfile.TarInfo, seen: set[str], max_bundle_bytes: int) -> str:
    name = member.name
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or ".." in name.split("/")
    ):
        raise _refuse("unsafe_archive", f"member {name!r} escapes the bundle")
    if "/" in name or name == ".":
        raise _refuse("unsafe_archive", f"member {name!r} is not a top-level file")
    if member.issym() or member.islnk():
        raise _refuse("unsafe_archive", f"member {name!r} is a link")
    if not member.isreg() or member.issparse():
        raise _refuse("unsafe_archive", f"member {name!r} is not a regular file")
    if name in seen:
        raise _refuse("unsafe_archive", f"member {name!r} appears twice")
    if name not in BUNDLE_FILES:
        raise _refuse("invalid_bundle", f"unexpected file {name!r} in the archive")
    limit = _file_limit(name, max_bundle_bytes)
    if member.size < 0 or member.size > limit:
        raise _refuse("unsafe_archive", f"member {name!r} has {member.size} bytes (limit {limit})")
    return name


def _copy_member(source: IO[bytes], target: Path, size: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(target, flags | getattr(os, "O_CLOEXEC", 0), _FILE_MODE)
    with os.fdopen(fd, "wb") as sink:
        remaining = size
        while remaining > 0:
            chunk = source.read(min(_CHUNK, remaining))
            if not chunk:
                raise tarfile.ReadError(f"unexpected end of data in {target.name!r}")
            sink.write(chunk)
            remaining -= len(chunk)
        sink.flush()
        os.fsync(sink.fileno())


def _check_complete(seen: set[str]) -> None:
    missing = sorted(BUNDLE_FILES - seen)
    if missing:
        raise _refuse("invalid_bundle", f"the archive lacks {', '.join(missing)}")


def unpack_archive(archive: Path, destination: Path, max_bundle_bytes: int) -> None:
    """Unpack a bundle archive into ``destination`` (which must not exist), all or nothing.

    Files go to a sibling ``.<name>.tmp`` directory that is renamed to ``destination`` once
    complete, so ``destination`` only ever exists whole.

    Args:
        archive: The downloaded ``.tar.gz`` (its digest already checked).
        destination: The bundle directory to create, ``bundles/<hex>``.
        max_bundle_bytes: The size bound of one file; the total is bounded by
            :data:`EXPANSION_FACTOR` times it.

    Raises:
        ActivationRefused: ``corrupt_archive``, ``unsafe_archive`` or ``invalid_bundle``.
    """
    _check_gzip(archive, EXPANSION_FACTOR * max_bundle_bytes)
    staging = destination.with_name(f".{destination.name}.tmp")
    remove_tree(staging)
    staging.mkdir(mode=_DIR_MODE, parents=True)
    try:
        seen: set[str] = set()
        try:
            with tarfile.open(archive, mode="r:gz") as tar:
                for member in tar:
                    name = _check_member(member, seen, max_bundle_bytes)
                    seen.add(name)
                    source = tar.extractfile(member)
                    if source is None:
                        raise _refuse("unsafe_archive", f"member {name!r} has no data")
                    with source:
                        _copy_member(source, staging / name, member.size)
        except (tarfile.TarError, EOFError, zlib.error, RecursionError) as exc:
            raise _refuse("corrupt_archive", f"not a readable tar archive: {exc}") from exc
        _check_complete(seen)
        fsync_dir(staging)
        if destination.exists() or destination.is_symlink():
            remove_tree(destination)
        staging.rename(destination)
        fsync_dir(destination.parent)
    except BaseException:
        remove_tree(staging)
        raise


def check_bundle_dir(directory: Path, max_bundle_bytes: int) -> BundleManifest:
    """Check an unpacked bundle's files against its manifest.json (names, sizes, SHA-256).

    Args:
        directory: A bundle directory, ``bundles/<hex>``.
        max_bundle_bytes: The size bound of one file.

    Returns:
        The bundle's manifest.

    Raises:
        ActivationRefused: ``invalid_bundle`` when anything is missing, extra or different.
    """
    try:
        names = {entry.name for entry in os.scandir(directory)}
    except OSError as exc:
        raise _refuse("invalid_bundle", f"cannot list the bundle: {exc.strerror or exc}") from exc
    if names != BUNDLE_FILES:
        found = ", ".join(sorted(names))
        raise _refuse("invalid_bundle", f"the bundle holds {found or 'nothing'}")
    sizes: dict[str, int] = {}
    for name in BUNDLE_FILES:
        info = (directory / name).lstat()
        if not stat.S_ISREG(info.st_mode) or info.st_size > _file_limit(name, max_bundle_bytes):
            raise _refuse("invalid_bundle", f"{name} is not a regular file within the size bound")
        sizes[name] = info.st_size
    try:
        manifest = msgspec.json.decode(
            (directory / MANIFEST_NAME).read_bytes(), type=BundleManifest
        )
    except (msgspec.MsgspecError, RecursionError) as exc:
        raise _refuse("invalid_bundle", f"{MANIFEST_NAME} is not a bundle manifest: {exc}") from exc
    if manifest.bundle_format != BUNDLE_FORMAT:
        raise _refuse("invalid_bundle", f"unsupported bundle format {manifest.bundle_format}")
    listed = [entry.path for entry in manifest.files]
    if sorted(listed) != sorted(BUNDLE_FILES - {MANIFEST_NAME}):
        raise _refuse("invalid_bundle", f"{MANIFEST_NAME} lists {listed!r}")
    for entry in manifest.files:
        if entry.size != sizes[entry.path]:
            raise _refuse(
                "invalid_bundle",
                f"{entry.path} has {sizes[entry.path]} bytes, {MANIFEST_NAME} says {entry.size}",
            )
        if file_sha256(directory / entry.path) != entry.sha256.lower():
            raise _refuse("invalid_bundle", f"{entry.path} does not match its SHA-256 in manifest")
    return manifest


def validate_bundle(directory: Path, payload: ManifestPayload, max_bundle_bytes: int) -> None:
    """Check an unpacked bundle against itself and the signed manifest, and re-check its spec.

    Raises:
        ActivationRefused: ``invalid_bundle``, ``spec_invalid`` or ``spec_hash_mismatch``.
    """
    manifest = check_bundle_dir(directory, max_bundle_bytes)
    if (manifest.org_id, manifest.environment_id) != (payload.org_id, payload.environment_id):
        raise _refuse(
            "invalid_bundle",
            f"the bundle is for {manifest.org_id}/{manifest.environment_id}, "
            f"the manifest for {payload.org_id}/{payload.environment_id}",
        )
    if manifest.spec_hash != payload.spec_hash:
        raise _refuse(
            "spec_hash_mismatch",
            f"{MANIFEST_NAME} has spec hash {manifest.spec_hash}, the manifest {payload.spec_hash}",
        )
    try:
        text = (directory / SPEC_NAME).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refuse("spec_invalid", f"{SPEC_NAME} is not UTF-8: {exc}") from exc
    errors = [d for d in validate_spec_kv(text) if d.severity == "error"]
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise _refuse("spec_invalid", f"{first.code} at {first.path}: {first.message}{more}")
    actual = spec_hash(text)
    if actual != payload.spec_hash:
        raise _refuse(
            "spec_hash_mismatch",
            f"{SPEC_NAME} hashes to {actual}, the manifest says {payload.spec_hash}",
        )
    try:
        msgspec.json.decode((directory / RUNTIME_CONFIG_NAME).read_bytes(), type=dict[str, object])
    except (msgspec.MsgspecError, RecursionError) as exc:
        raise _refuse(
            "invalid_bundle", f"{RUNTIME_CONFIG_NAME} is not a JSON object: {exc}"
        ) from exc
