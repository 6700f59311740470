"""Deterministic bundle archives: the same inputs always give byte-identical ``.tar.gz``."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from typing import Any

from shared.bundle import BundleFile, BundleManifest, encode_manifest, encode_runtime_config

__all__ = ["build_bundle_archive"]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    tar.addfile(info, io.BytesIO(data))


def build_bundle_archive(
    *,
    org_id: str,
    environment_id: str,
    pipeline_version_id: str,
    spec_kv: str,
    spec_hash: str,
    tuning_profile: str,
    runtime_config: dict[str, Any],
) -> bytes:
    """Build the archive (manifest.json, spec.kv, runtime_config.json) and return its bytes."""
    payload = {
        "spec.kv": spec_kv.encode("utf-8"),
        "runtime_config.json": encode_runtime_config(runtime_config),
    }
    manifest = BundleManifest(
        org_id=org_id,
        environment_id=environment_id,
        pipeline_version_id=pipeline_version_id,
        spec_hash=spec_hash,
        tuning_profile=tuning_profile,
        files=[
            BundleFile(path=name, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
            for name, data in payload.items()
        ],
    )
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "manifest.json", encode_manifest(manifest))
        for name, data in payload.items():
            _add(tar, name, data)
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, mtime=0) as gz:
        gz.write(raw.getvalue())
    return compressed.getvalue()
