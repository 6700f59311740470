"""Artifact uploads against a real server: 64 MiB + 1 is refused while streaming, memory stays flat."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import msgspec
import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.artifacts import MAX_ARTIFACT_BYTES, ArtifactMetadata, sign_metadata
from tests.e2e.conftest import start_server
from tests.e2e.fleet import bootstrap_tenant

BOUNDARY = "byteor-e2e-boundary"
MIB = 1024 * 1024


def _head(meta: ArtifactMetadata) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="metadata"\r\n'
            "Content-Type: application/json\r\n\r\n"
        ).encode()
        + msgspec.json.encode(meta)
        + (
            f'\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\n'
        ).encode()
    )


def _stream(meta: ArtifactMetadata, size: int) -> Iterator[bytes]:
    yield _head(meta)
    chunk = b"\1" * MIB
    sent = 0
    while sent < size:
        piece = chunk[: min(MIB, size - sent)]
        sent += len(piece)
        yield piece
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def test_oversized_uploads_are_413_and_server_memory_stays_flat(tmp_path: Path) -> None:
    server = start_server(tmp_path)
    try:
        tenant = bootstrap_tenant(server)
        key = Ed25519PrivateKey.generate()
        public = base64.urlsafe_b64encode(
            key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        )
        token = tenant.enrollment_token()["token"]
        agent = httpx.post(
            f"{tenant.env_url}/agents",
            headers={"Authorization": f"Bearer {token}"},
            json={"public_key": public.decode().rstrip("=")},
        ).json()
        url = f"{server.url}/api/v1/agents/{agent['agent_id']}/artifacts"
        headers = {
            "Authorization": f"Bearer {agent['api_key']}",
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        }

        def meta(size: int, digest: str) -> ArtifactMetadata:
            return sign_metadata(
                ArtifactMetadata(
                    agent_id=agent["agent_id"],
                    kind="telemetry",
                    sha256=digest,
                    size=size,
                    captured_at=datetime.now(UTC),
                    idempotency_key=secrets.token_hex(8),
                    filename="f",
                ),
                key,
            )

        process = psutil.Process(server.process.pid)
        httpx.get(f"{server.url}/healthz")
        baseline = process.memory_info().rss

        too_big = MAX_ARTIFACT_BYTES + 1
        chunked = httpx.post(
            url,
            headers=headers,
            content=_stream(meta(MAX_ARTIFACT_BYTES, "0" * 64), too_big),
            timeout=120,
        )
        assert chunked.status_code == 413, chunked.text
        assert chunked.request.headers.get("transfer-encoding") == "chunked"

        body = b"".join(_stream(meta(MAX_ARTIFACT_BYTES, "0" * 64), too_big))
        declared = httpx.post(url, headers=headers, content=body, timeout=120)
        assert declared.status_code == 413
        del body

        payload = b"\1" * (48 * MIB)
        accepted = httpx.post(
            url,
            headers=headers,
            content=_stream(meta(len(payload), hashlib.sha256(payload).hexdigest()), len(payload)),
            timeout=120,
        )
        assert accepted.status_code == 201, accepted.text
        growth = process.memory_info().rss - baseline
        assert growth < 40 * MIB, f"server RSS grew by {growth / MIB:.1f} MiB"
        staging = tmp_path / "byteor-data" / "blobs" / "staging"
        assert not staging.exists() or list(staging.iterdir()) == []
    finally:
        server.stop()
