"""A filesystem blob store addressed by SHA-256: ``<root>/sha256/ab/abcdef...``.

Writes go to a temporary file in the same directory, are fsynced, then renamed into place, so a
blob is either absent or complete; writing the same content twice is a no-op.

Small blobs read for serving are kept in memory (:meth:`BlobStore.read_small`), least recently
used first out, within a byte budget. During a rollout a whole fleet downloads the same bundle
within seconds; streamed from disk, each download is several thread hops (stat, open, read,
close) through a thread pool of 40, and under load each hop waits for the busy event loop, so
downloads queue for minutes. A blob's content never changes (it is named by its digest), so a
cached copy is never stale; whether the blob still exists is checked on disk each time.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections import OrderedDict
from pathlib import Path

__all__ = ["BlobStore"]

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")


#: Blobs at most this large are served from memory (bundles are a few kilobytes).
SMALL_BLOB_BYTES = 1024 * 1024
#: Bytes of small blobs kept in memory, per process.
HOT_BYTES = 32 * 1024 * 1024


class BlobStore:
    def __init__(self, root: Path, *, hot_bytes: int = HOT_BYTES) -> None:
        self.root = root
        self._hot: OrderedDict[str, bytes] = OrderedDict()
        self._hot_bytes = 0
        self._hot_budget = hot_bytes

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

    def read_small(self, digest: str, limit: int = SMALL_BLOB_BYTES) -> bytes | None:
        """The blob's bytes when it exists and is at most ``limit`` bytes, else ``None``.

        From memory when it was read recently; else read at once (a small file, usually in
        the page cache) and kept. Whether the blob exists is checked on disk every time, so a
        blob deleted by another process is not served from memory.
        """
        path = self.path_for(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            self._forget(digest)
            return None
        if size > limit:
            return None
        data = self._hot.get(digest)
        if data is not None:
            self._hot.move_to_end(digest)
            return data
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if len(data) <= self._hot_budget:
            self._hot[digest] = data
            self._hot_bytes += len(data)
            while self._hot_bytes > self._hot_budget:
                _, evicted = self._hot.popitem(last=False)
                self._hot_bytes -= len(evicted)
        return data

    @property
    def hot_bytes(self) -> int:
        """Bytes of small blobs held in memory now."""
        return self._hot_bytes

    def _forget(self, digest: str) -> None:
        data = self._hot.pop(digest, None)
        if data is not None:
            self._hot_bytes -= len(data)

    def delete(self, digest: str) -> bool:
        """Remove a blob; returns whether it existed."""
        self._forget(digest)
        path = self.path_for(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        return True
