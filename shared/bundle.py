"""The config bundle archive: what is inside and how its manifest describes it.

A bundle is a gzip-compressed tar with exactly these regular files, in this order:
``manifest.json``, ``spec.kv``, ``runtime_config.json``. The manifest lists every other file with
its SHA-256 digest and size, so a reader can check each file after unpacking. The archive is built
deterministically (sorted members, zero timestamps and owners, fixed modes), so the same inputs give
the same bytes and therefore the same content address.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared.base import Message

__all__ = [
    "BUNDLE_FORMAT",
    "BundleFile",
    "BundleManifest",
    "encode_manifest",
    "encode_runtime_config",
]

BUNDLE_FORMAT = 1


class BundleFile(Message):
    path: str
    sha256: str
    size: int


class BundleManifest(Message):
    org_id: str
    environment_id: str
    pipeline_version_id: str
    spec_hash: str
    tuning_profile: str
    files: list[BundleFile]
    bundle_format: int = BUNDLE_FORMAT


_encoder = msgspec.json.Encoder(order="sorted")


def encode_manifest(manifest: BundleManifest) -> bytes:
    """Canonical manifest bytes: sorted keys, no whitespace, trailing newline."""
    return _encoder.encode(manifest) + b"\n"


def encode_runtime_config(config: dict[str, Any]) -> bytes:
    """Canonical runtime config bytes: sorted keys, no whitespace, trailing newline."""
    return _encoder.encode(config) + b"\n"
