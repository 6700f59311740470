"""A filesystem blob store addressed by SHA-256: ``<root>/sha256/ab/abcdef...``.

Writes go to a temporary file in the same directory, are fsynced, then renamed into place, so a
blob is either absent or complete; writing the same content twice is a no-op.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

__all__ = ["BlobStore"]

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, digest: str) -> Path:
        """Where the blob with ``digest`` (``sha256:<hex>``) lives."""
        match = _DIGEST.match(digest)
        if match is None:
            raise ValueError(f"not a sha256 digest: {digest!r}")
        hexdigest = match.group(1)
        return self.root / "sha256" / hexdigest[:2] / hexdigest

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        """Store ``data``; returns its digest and size."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        target = self.path_for(digest)
        if target.exists():
            return digest, len(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            Path(temp).replace(target)
            directory = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        return digest, len(data)

    def staging_file(self) -> Path:
        """A new empty temporary file on the blob store's filesystem (rename-able into place)."""
        staging = self.root / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=staging, prefix="upload-")
        os.close(fd)
        return Path(name)

    def adopt(self, staged: Path, digest: str) -> None:
        """Move a fully written, fsynced staged file into place under ``digest`` (idempotent)."""
        target = self.path_for(digest)
        if target.exists():
            staged.unlink(missing_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(target)

    def exists(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def read_bytes(self, digest: str) -> bytes:
        return self.path_for(digest).read_bytes()

    def delete(self, digest: str) -> bool:
        """Remove a blob; returns whether it existed."""
        path = self.path_for(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True
