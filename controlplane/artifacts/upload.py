"""Receive ``POST /api/v1/agents/{id}/artifacts`` while it streams: never the whole body in memory.

The multipart body is parsed incrementally (``multipart.PushMultipartParser``). The ``metadata``
part is checked first (agent, signature, duplicates); the ``file`` part is written to a staging
file on the blob store's filesystem while being hashed and counted, and refused with 413 the
moment it passes 64 MiB or its declared size. No database transaction is open while the body
streams (SQLite would hold its write lock). Only a complete, digest-verified file becomes a blob
and a row.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

import msgspec
from multipart import MultipartError, MultipartSegment, PushMultipartParser, parse_options_header
from sqlalchemy import or_, select

from controlplane.db.models import AgentRow, ArtifactRow
from controlplane.errors import BadRequest, PayloadTooLarge
from controlplane.jobs import Jobs
from shared.artifacts import MAX_ARTIFACT_BYTES, ArtifactMetadata, ArtifactReceipt, verify_metadata
from shared.ids import new_id

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from litestar import Request

    from controlplane.auth.principal import AgentPrincipal
    from controlplane.blobs import BlobStore
    from controlplane.db import Database

__all__ = ["INGEST_JOB", "MAX_METADATA_BYTES", "MAX_UPLOAD_BODY", "receive_upload"]

INGEST_JOB = "artifact.ingest"
MAX_METADATA_BYTES = 64 * 1024
#: The whole multipart body: the file plus the metadata part and the framing.
MAX_UPLOAD_BODY = MAX_ARTIFACT_BYTES + MAX_METADATA_BYTES + 16 * 1024

_decode_metadata = msgspec.json.Decoder(ArtifactMetadata).decode


async def _existing(
    database: Database, agent: AgentPrincipal, metadata: ArtifactMetadata
) -> tuple[str, str] | None:
    """``(artifact id, status)`` of an upload this agent already made, after checking its key."""
    async with database.sessionmaker() as session:
        row = await session.get(AgentRow, agent.agent_id)
        public_key = row.public_key if row else None
        if not public_key:
            raise BadRequest(
                "This agent has registered no identity key: PUT it to "
                f"/api/v1/agents/{agent.agent_id}/identity-key first"
            )
        if not verify_metadata(metadata, public_key):
            raise BadRequest("The artifact metadata is not signed by this agent's key")
        found = await session.scalar(
            select(ArtifactRow).where(
                ArtifactRow.agent_id == agent.agent_id,
                or_(
                    ArtifactRow.idempotency_key == metadata.idempotency_key,
                    ArtifactRow.digest == "sha256:" + metadata.sha256,
                ),
            )
        )
        return (found.id, found.status) if found else None


class _Upload:
    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.metadata: ArtifactMetadata | None = None
        self.duplicate: tuple[str, str] | None = None
        self.staged: Path | None = None
        self.handle: Any = None
        self.hasher = hashlib.sha256()
        self.size = 0
        self.metadata_buffer = bytearray()
        self.part: str | None = None

    def open_file(self) -> None:
        self.staged = self.blobs.staging_file()
        self.handle = self.staged.open("wb")

    def write(self, chunk: bytes) -> None:
        assert self.metadata is not None  # noqa: S101 - the metadata part came first
        self.size += len(chunk)
        if self.size > MAX_ARTIFACT_BYTES:
            raise PayloadTooLarge(f"Artifacts are limited to {MAX_ARTIFACT_BYTES} bytes")
        if self.size > self.metadata.size:
            raise BadRequest("The file is larger than the size its metadata declares")
        if self.handle is not None:
            self.hasher.update(chunk)
            self.handle.write(chunk)

    def finish(self) -> None:
        if self.handle is not None:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            self.handle = None

    def discard(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if self.staged is not None:
            self.staged.unlink(missing_ok=True)


async def receive_upload(
    request: Request[Any, Any, Any],
    database: Database,
    blobs: BlobStore,
    agent: AgentPrincipal,
    wake: Callable[[], None] | None = None,
) -> tuple[ArtifactReceipt, bool]:
    """Store one uploaded artifact; returns the receipt and whether it was new.

    ``wake`` tells this process's worker about the ingest job once it is committed.
    """
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get("boundary")
    if kind != "multipart/form-data" or not boundary:
        raise BadRequest("Send multipart/form-data with a metadata part and a file part")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_UPLOAD_BODY:
        raise PayloadTooLarge(f"Artifacts are limited to {MAX_ARTIFACT_BYTES} bytes")
    upload = _Upload(blobs)
    received = 0
    try:
        with PushMultipartParser(boundary, max_segment_count=2, strict=True) as parser:
            async for chunk in request.stream():
                received += len(chunk)
                if received > MAX_UPLOAD_BODY:
                    raise PayloadTooLarge(f"Artifacts are limited to {MAX_ARTIFACT_BYTES} bytes")  # noqa: TRY301
                for event in parser.parse(chunk):
                    await _on_event(event, upload, database, agent)
            for event in parser.parse(b""):
                await _on_event(event, upload, database, agent)
    except MultipartError as exc:
        upload.discard()
        raise BadRequest(f"Malformed multipart body: {exc}") from None
    except BaseException:
        upload.discard()
        raise
    metadata = upload.metadata
    if (
        metadata is None
        or upload.part is not None
        or (upload.duplicate is None and upload.staged is None)
    ):
        upload.discard()
        raise BadRequest("The body needs a metadata part followed by a file part")
    if upload.duplicate is not None:
        upload.discard()
        artifact_id, status = upload.duplicate
        return ArtifactReceipt(artifact_id=artifact_id, status=status, duplicate=True), False
    upload.finish()
    digest = "sha256:" + upload.hasher.hexdigest()
    if upload.size != metadata.size or digest != "sha256:" + metadata.sha256:
        upload.discard()
        raise BadRequest("The file does not match the size and sha256 its metadata declares")
    assert upload.staged is not None  # noqa: S101 - checked above
    blobs.adopt(upload.staged, digest)
    return await _record(database, agent, metadata, digest, wake)


async def _on_event(event: Any, upload: _Upload, database: Database, agent: AgentPrincipal) -> None:
    if isinstance(event, MultipartSegment):
        upload.part = event.name
        if event.name == "metadata":
            if upload.metadata is not None:
                raise BadRequest("Only one metadata part is allowed")
        elif event.name == "file":
            if upload.metadata is None:
                raise BadRequest("The metadata part must come before the file part")
            if upload.duplicate is None:
                upload.open_file()
        else:
            raise BadRequest(f"Unexpected part {event.name!r}; send metadata and file")
    elif event is None:
        if upload.part == "metadata":
            await _on_metadata(upload, database, agent)
        upload.part = None
    elif upload.part == "metadata":
        upload.metadata_buffer += event
        if len(upload.metadata_buffer) > MAX_METADATA_BYTES:
            raise BadRequest("The metadata part is too large")
    elif upload.part == "file":
        upload.write(bytes(event))


async def _on_metadata(upload: _Upload, database: Database, agent: AgentPrincipal) -> None:
    try:
        metadata = _decode_metadata(bytes(upload.metadata_buffer))
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BadRequest(f"Invalid artifact metadata: {exc}") from None
    if metadata.agent_id != agent.agent_id:
        raise BadRequest("The metadata names another agent")
    upload.metadata = metadata
    upload.duplicate = await _existing(database, agent, metadata)


async def _record(
    database: Database,
    agent: AgentPrincipal,
    metadata: ArtifactMetadata,
    digest: str,
    wake: Callable[[], None] | None,
) -> tuple[ArtifactReceipt, bool]:
    from sqlalchemy.exc import IntegrityError

    async with database.sessionmaker() as session:
        row = ArtifactRow(
            id=new_id("art"),
            org_id=agent.org_id,
            env_id=agent.env_id,
            agent_id=agent.agent_id,
            kind=metadata.kind,
            digest=digest,
            size=metadata.size,
            filename=metadata.filename,
            captured_at=metadata.captured_at,
            deployment_id=metadata.deployment_id,
            spec_hash=metadata.spec_hash,
            idempotency_key=metadata.idempotency_key,
            signature=metadata.signature,
            status="received",
        )
        session.add(row)
        try:
            await session.flush()
        except IntegrityError:
            await session.rollback()  # a concurrent retry of the same upload won
            existing = await _existing(database, agent, metadata)
            if existing is None:  # pragma: no cover - the constraint names exactly this case
                raise
            return ArtifactReceipt(
                artifact_id=existing[0], status=existing[1], duplicate=True
            ), False
        await Jobs(session, wake).enqueue(
            INGEST_JOB, {"artifact_id": row.id}, dedupe_key=f"{INGEST_JOB}:{row.id}"
        )
        await session.commit()
        return ArtifactReceipt(artifact_id=row.id, status=row.status), True
