"""Artifact ingest (a durable job): validate incident bundles against the v1 layout.

An incident bundle is a gzip tar of one directory (or of files at the top level) holding the
required ``spec.kv``, ``spec_validation.json``, ``runtime.json``, ``policy_audit.json`` and
``environment.json``, and optionally ``runtime_config.txt``, ``single_ring_snapshot.json``,
``lane_graph_state.json`` and ``journal.jsonl`` (captured records, used by replay). The JSON files
must hold JSON objects; ``spec.kv`` must validate and its hash must match a pipeline version of
the environment. Anything else keeps the artifact but marks it ``invalid`` with the reasons.
Reading is bounded (members, sizes, compression ratio) so a hostile archive cannot exhaust the
worker; links, devices and paths escaping the bundle are reasons, never followed.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zlib
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from controlplane.db.models import ArtifactRow, PipelineVersionRow
from shared.spec import spec_hash, validate_spec_kv

if TYPE_CHECKING:
    from controlplane.jobs import JobContext

__all__ = ["OPTIONAL_FILES", "REQUIRED_FILES", "ingest_artifact", "read_incident_bundle"]

REQUIRED_FILES = (
    "spec.kv",
    "spec_validation.json",
    "runtime.json",
    "policy_audit.json",
    "environment.json",
)
OPTIONAL_FILES = (
    "runtime_config.txt",
    "single_ring_snapshot.json",
    "lane_graph_state.json",
    "journal.jsonl",
)
MAX_MEMBERS = 64
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_TOTAL_BYTES = 256 * 1024 * 1024


class BundleRejected(Exception):
    """The archive cannot be read as an incident bundle at all."""


def _decompress(data: bytes) -> bytes:
    stream = zlib.decompressobj(wbits=31)  # gzip framing
    out = bytearray()
    view = memoryview(data)
    step = 1 << 16
    for start in range(0, len(view), step):
        out += stream.decompress(view[start : start + step], MAX_TOTAL_BYTES + 1 - len(out))
        if len(out) > MAX_TOTAL_BYTES or stream.unconsumed_tail:
            raise BundleRejected(f"decompresses to more than {MAX_TOTAL_BYTES} bytes (a tar bomb?)")
    if not stream.eof:
        raise BundleRejected("the gzip stream is truncated")
    return bytes(out)


def read_incident_bundle(data: bytes) -> tuple[dict[str, bytes], list[str]]:
    """The bundle's files by name, and the reasons it is not a valid v1 bundle (if any)."""
    reasons: list[str] = []
    try:
        raw = _decompress(data)
        tar = tarfile.open(fileobj=io.BytesIO(raw), mode="r:")  # noqa: SIM115 - closed below
    except (
        BundleRejected,
        zlib.error,
        gzip.BadGzipFile,
        tarfile.TarError,
        EOFError,
        OSError,
    ) as exc:
        return {}, [f"not a gzip tar archive: {exc}"]
    files: dict[str, bytes] = {}
    with tar:
        try:
            members = tar.getmembers()
        except tarfile.TarError as exc:
            return {}, [f"corrupt tar archive: {exc}"]
        if len(members) > MAX_MEMBERS:
            return {}, [f"too many members ({len(members)} > {MAX_MEMBERS})"]
        names = [m.name for m in members if m.isfile()]
        tops = {n.split("/", 1)[0] for n in names if "/" in n}
        prefix = next(iter(tops)) + "/" if len(tops) == 1 and all("/" in n for n in names) else ""
        for member in members:
            name = member.name
            if name.startswith("/") or ".." in name.split("/"):
                reasons.append(f"member {name!r} escapes the bundle")
                continue
            if member.isdir():
                continue
            if not member.isfile():
                reasons.append(f"member {name!r} is not a regular file")
                continue
            relative = name.removeprefix(prefix)
            if "/" in relative:
                reasons.append(f"unexpected nested file {name!r}")
                continue
            if member.size > MAX_FILE_BYTES:
                reasons.append(f"{relative} is larger than {MAX_FILE_BYTES} bytes")
                continue
            extracted = tar.extractfile(member)
            if extracted is not None:
                files[relative] = extracted.read()
    return files, reasons


def validate_incident(files: dict[str, bytes]) -> tuple[list[str], str | None]:
    """Reasons the files break the v1 layout, and the hash of their ``spec.kv``."""
    reasons = [f"missing required file {name}" for name in REQUIRED_FILES if name not in files]
    unknown = sorted(set(files) - set(REQUIRED_FILES) - set(OPTIONAL_FILES))
    reasons += [f"unexpected file {name}" for name in unknown]
    for name, content in files.items():
        if name.endswith(".json"):
            try:
                if not isinstance(json.loads(content), dict):
                    reasons.append(f"{name} does not hold a JSON object")
            except (UnicodeDecodeError, ValueError) as exc:
                reasons.append(f"{name} is not valid JSON: {exc}")
    spec_digest = None
    if "spec.kv" in files:
        try:
            text = files["spec.kv"].decode("utf-8")
        except UnicodeDecodeError:
            reasons.append("spec.kv is not UTF-8")
        else:
            spec_digest = spec_hash(text)
            errors = [d for d in validate_spec_kv(text) if d.severity == "error"]
            reasons += [f"spec.kv {d.code} at {d.path}: {d.message}" for d in errors[:10]]
    return reasons, spec_digest


async def ingest_artifact(context: JobContext, payload: dict[str, Any]) -> None:
    """Job: validate an incident bundle and match its spec to a pipeline version (idempotent)."""
    artifact_id = str(payload.get("artifact_id", ""))
    async with context.database.sessionmaker() as session:
        row = await session.get(ArtifactRow, artifact_id)
        if row is None or row.status != "received":
            return
        digest, kind, env_id = row.digest, row.kind, row.env_id
        await session.rollback()  # read the blob without holding a transaction
    result: dict[str, Any] = {"reasons": []}
    version_id = None
    if kind == "incident":
        files, reasons = read_incident_bundle(context.blobs.read_bytes(digest))
        more, spec_digest = validate_incident(files) if files or not reasons else ([], None)
        reasons += more
        result["files"] = sorted(files)
        result["spec_hash"] = spec_digest
        if spec_digest is not None:
            async with context.database.sessionmaker() as session:
                version_id = await session.scalar(
                    select(PipelineVersionRow.id)
                    .where(
                        PipelineVersionRow.env_id == env_id,
                        PipelineVersionRow.spec_hash == spec_digest,
                    )
                    .order_by(PipelineVersionRow.id.desc())
                    .limit(1)
                )
            if version_id is None:
                reasons.append(
                    f"no pipeline version of this environment has spec hash {spec_digest}"
                )
        result["reasons"] = reasons
    async with context.database.sessionmaker() as session:
        row = await session.get(ArtifactRow, artifact_id)
        if row is None or row.status != "received":
            return
        row.status = "invalid" if result["reasons"] else "valid"
        row.ingest = result
        row.pipeline_version_id = version_id
        if kind == "incident" and result.get("spec_hash") and not row.spec_hash:
            row.spec_hash = result["spec_hash"]
        await session.commit()
