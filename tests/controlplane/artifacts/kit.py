"""Builders for artifact tests: signed metadata, incident bundles, an agent with a signing key."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import secrets
import tarfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from shared.artifacts import ArtifactMetadata, sign_metadata
from tests.conftest import Stack, Tree
from tests.controlplane.agents.helpers import enroll, enrollment_token


@dataclass
class SigningAgent:
    agent_id: str
    api_key: str
    key: Ed25519PrivateKey

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


async def signing_agent(stack: Stack, tree: Tree) -> SigningAgent:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    token = await enrollment_token(stack, tree)
    response = await enroll(
        stack,
        tree,
        token["token"],
        public_key=base64.urlsafe_b64encode(public).decode().rstrip("="),
    )
    body = response.json()
    return SigningAgent(agent_id=body["agent_id"], api_key=body["api_key"], key=key)


def metadata(
    agent: SigningAgent, content: bytes, kind: str = "incident", **extra: Any
) -> ArtifactMetadata:
    fields: dict[str, Any] = {
        "agent_id": agent.agent_id,
        "kind": kind,
        "sha256": hashlib.sha256(content).hexdigest(),
        "size": len(content),
        "captured_at": datetime.now(UTC),
        "idempotency_key": secrets.token_hex(8),
        "filename": "incident.tar.gz" if kind == "incident" else "telemetry.bin",
    } | extra
    return sign_metadata(msgspec.convert(fields, ArtifactMetadata), agent.key)


async def upload(
    stack: Stack, agent: SigningAgent, meta: ArtifactMetadata, content: bytes
) -> httpx.Response:
    return await stack.call(
        "POST",
        f"/api/v1/agents/{agent.agent_id}/artifacts",
        headers=agent.headers,
        files=[
            ("metadata", ("metadata.json", msgspec.json.encode(meta), "application/json")),
            ("file", (meta.filename, content, "application/octet-stream")),
        ],
    )


def tar_gz(files: dict[str, bytes], top: str | None = "incident") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def incident_files(spec_kv: str, **overrides: bytes) -> dict[str, bytes]:
    journal = "\n".join(
        json.dumps({"seq": i, "lane": "in", "key": f"k{i % 3}", "payload": f"order-{i}"})
        for i in range(6)
    )
    files = {
        "spec.kv": spec_kv.encode(),
        "spec_validation.json": b'{"ok": true, "diagnostics": []}',
        "runtime.json": b'{"uptime_s": 12, "version": "0.1.0"}',
        "policy_audit.json": b'{"decisions": []}',
        "environment.json": b'{"hostname": "edge-1"}',
        "journal.jsonl": journal.encode(),
    }
    files.update(overrides)
    return files


async def wait_ingested(stack: Stack, tree: Tree, artifact_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body: dict[str, Any] = await stack.ok(
            "GET", f"{tree.env_path}/artifacts/{artifact_id}", tree.owner
        )
        if body["status"] != "received":
            return body
        stack.app.state.worker.notify()
        import asyncio

        await asyncio.sleep(0.05)
    raise AssertionError("artifact never ingested")
