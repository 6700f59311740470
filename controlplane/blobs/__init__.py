"""Content-addressed blob storage (bundle archives, artifacts)."""

from __future__ import annotations

from controlplane.blobs.store import BlobStore

__all__ = ["BlobStore"]
