from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import AsyncIterator

import msgspec
import pytest
from sqlalchemy import update

from controlplane.db.models import AgentKeyRow, ArtifactRow
from tests.conftest import Stack, Tree
from tests.controlplane.artifacts.kit import (
    incident_files,
    metadata,
    signing_agent,
    tar_gz,
    upload,
    wait_ingested,
)
from tests.controlplane.pipelines.plans import SINGLE_RING

pytestmark = pytest.mark.anyio


async def promoted_spec(stack: Stack, tree: Tree) -> dict[str, str]:
    draft = await stack.ok(
        "POST", f"{tree.env_path}/drafts", tree.owner, json={"name": "d", "plan": SINGLE_RING}
    )
    version: dict[str, str] = await stack.ok(
        "POST", f"{tree.env_path}/drafts/{draft['id']}/version", tree.owner
    )
    return version


def staged_files(stack: Stack) -> list[str]:
    staging = stack.settings.blob_dir / "staging"
    return sorted(p.name for p in staging.iterdir()) if staging.exists() else []


async def test_incident_upload_is_stored_ingested_and_downloadable(
    stack: Stack, tree: Tree
) -> None:
    version = await promoted_spec(stack, tree)
    agent = await signing_agent(stack, tree)
    content = tar_gz(incident_files(version["spec_kv"]))
    meta = metadata(agent, content)
    response = await upload(stack, agent, meta, content)
    assert response.status_code == 201, response.text
    receipt = response.json()
    assert receipt["artifact_id"].startswith("art_")
    assert receipt["duplicate"] is False

    artifact = await wait_ingested(stack, tree, receipt["artifact_id"])
    assert artifact["status"] == "valid", artifact["ingest"]
    assert artifact["pipeline_version_id"] == version["id"]
    assert artifact["spec_hash"] == version["spec_hash"]
    assert artifact["agent_id"] == agent.agent_id
    assert artifact["digest"] == "sha256:" + meta.sha256
    assert "journal.jsonl" in artifact["ingest"]["files"]

    downloaded = await stack.call(
        "GET", f"{tree.env_path}/artifacts/{receipt['artifact_id']}/content", tree.owner
    )
    assert downloaded.content == content
    listed = await stack.ok(
        "GET",
        f"{tree.env_path}/artifacts",
        tree.owner,
        params={"kind": "incident", "status": "valid"},
    )
    assert [a["id"] for a in listed["items"]] == [receipt["artifact_id"]]
    none = await stack.ok(
        "GET", f"{tree.env_path}/artifacts", tree.owner, params={"kind": "telemetry"}
    )
    assert none["items"] == []


async def test_retries_never_duplicate(stack: Stack, tree: Tree) -> None:
    agent = await signing_agent(stack, tree)
    content = b"telemetry sample"
    meta = metadata(agent, content, kind="telemetry")
    first = (await upload(stack, agent, meta, content)).json()
    again = await upload(stack, agent, meta, content)
    assert again.status_code == 200
    assert again.json() == first | {"duplicate": True, "status": again.json()["status"]}
    same_bytes_new_key = await upload(
        stack, agent, metadata(agent, content, kind="telemetry"), content
    )
    assert same_bytes_new_key.status_code == 200
    assert same_bytes_new_key.json()["artifact_id"] == first["artifact_id"]
    assert await stack.count(ArtifactRow, ArtifactRow.agent_id == agent.agent_id) == 1


@pytest.mark.parametrize(
    "case", ["digest", "size", "signature", "other_agent", "order", "extra_part", "not_multipart"]
)
async def test_bad_uploads_are_400_and_store_nothing(stack: Stack, tree: Tree, case: str) -> None:
    agent = await signing_agent(stack, tree)
    content = b"x" * 1000
    meta = metadata(agent, content, kind="telemetry")
    url = f"/api/v1/agents/{agent.agent_id}/artifacts"
    if case == "digest":
        response = await upload(stack, agent, meta, b"y" * 1000)
    elif case == "size":
        response = await upload(stack, agent, meta, content + b"more")
    elif case == "signature":
        forged = msgspec.structs.replace(meta, filename="other.bin")
        response = await upload(stack, agent, forged, content)
    elif case == "other_agent":
        other = await signing_agent(stack, tree)
        response = await upload(stack, agent, metadata(other, content, kind="telemetry"), content)
    elif case == "order":
        response = await stack.call(
            "POST",
            url,
            headers=agent.headers,
            files=[
                ("file", ("f", content, "application/octet-stream")),
                ("metadata", ("m", msgspec.json.encode(meta), "application/json")),
            ],
        )
    elif case == "extra_part":
        response = await stack.call(
            "POST",
            url,
            headers=agent.headers,
            files=[("surprise", ("s", b"?", "text/plain"))],
        )
    else:
        response = await stack.call("POST", url, headers=agent.headers, json={"hello": "world"})
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert await stack.count(ArtifactRow, ArtifactRow.agent_id == agent.agent_id) == 0
    assert staged_files(stack) == []


async def test_over_64_mib_is_413_while_streaming(stack: Stack, tree: Tree) -> None:
    agent = await signing_agent(stack, tree)
    size = 64 * 1024 * 1024 + 1
    meta = metadata(agent, b"", kind="telemetry", size=64 * 1024 * 1024, sha256="0" * 64)
    boundary = "byteorboundary"
    head = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="metadata"\r\nContent-Type: application/json\r\n\r\n'
        ).encode()
        + msgspec.json.encode(meta)
        + (
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big"\r\n\r\n'
        ).encode()
    )

    async def body() -> AsyncIterator[bytes]:
        yield head
        chunk = b"\0" * (1024 * 1024)
        sent = 0
        while sent < size:
            piece = chunk[: min(len(chunk), size - sent)]
            sent += len(piece)
            yield piece
        yield f"\r\n--{boundary}--\r\n".encode()

    response = await stack.call(
        "POST",
        f"/api/v1/agents/{agent.agent_id}/artifacts",
        headers=agent.headers | {"content-type": f"multipart/form-data; boundary={boundary}"},
        content=body(),
    )
    assert response.status_code == 413, response.text
    assert "content-length" not in response.request.headers
    assert await stack.count(ArtifactRow, ArtifactRow.agent_id == agent.agent_id) == 0
    assert staged_files(stack) == []


async def test_key_without_upload_scope_is_403(stack: Stack, tree: Tree) -> None:
    agent = await signing_agent(stack, tree)
    async with stack.database.sessionmaker() as session:
        await session.execute(
            update(AgentKeyRow)
            .where(AgentKeyRow.agent_id == agent.agent_id)
            .values(scopes=["agent:heartbeat"])
        )
        await session.commit()
    content = b"abc"
    response = await upload(stack, agent, metadata(agent, content, kind="telemetry"), content)
    assert response.status_code == 403


def _tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        tar.addfile(member, io.BytesIO(data) if data else None)
    return raw.getvalue()


def _bomb() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [compressor.compress(b"\0" * (1 << 20)) for _ in range(300)]
    out.append(compressor.flush())
    return b"".join(out)


def _link() -> bytes:
    link = tarfile.TarInfo("incident/spec.kv")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    return _tar_with(link)


def _traversal() -> bytes:
    member = tarfile.TarInfo("../../etc/cron.d/evil")
    member.size = 3
    return _tar_with(member, b"bad")


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("corrupt", "not a gzip tar"),
        ("truncated", "gzip"),
        ("bomb", "tar bomb"),
        ("traversal", "escapes the bundle"),
        ("symlink", "not a regular file"),
        ("missing", "missing required file policy_audit.json"),
        ("bad_json", "runtime.json is not valid JSON"),
        ("not_object", "environment.json does not hold a JSON object"),
        ("unknown_spec", "no pipeline version of this environment has spec hash"),
        ("bad_spec", "spec.kv"),
    ],
)
async def test_broken_incident_bundles_are_kept_but_invalid(
    stack: Stack, tree: Tree, case: str, reason: str
) -> None:
    version = await promoted_spec(stack, tree)
    good = incident_files(version["spec_kv"])
    content = {
        "corrupt": b"this is not gzip at all",
        "truncated": tar_gz(good)[:-20],
        "bomb": _bomb(),
        "traversal": _traversal(),
        "symlink": _link(),
        "missing": tar_gz({k: v for k, v in good.items() if k != "policy_audit.json"}),
        "bad_json": tar_gz(good | {"runtime.json": b"{not json"}),
        "not_object": tar_gz(good | {"environment.json": b"[1, 2]"}),
        "unknown_spec": tar_gz(
            incident_files(
                version["spec_kv"].replace("pipeline.name=orders", "pipeline.name=other")
            )
        ),
        "bad_spec": tar_gz(good | {"spec.kv": b"spec.version=1\ngarbage\n"}),
    }[case]
    agent = await signing_agent(stack, tree)
    response = await upload(stack, agent, metadata(agent, content), content)
    assert response.status_code == 201, response.text
    artifact = await wait_ingested(stack, tree, response.json()["artifact_id"])
    assert artifact["status"] == "invalid"
    assert any(reason in r for r in artifact["ingest"]["reasons"]), artifact["ingest"]


async def test_deleting_the_environment_removes_artifact_blobs(stack: Stack, tree: Tree) -> None:
    agent = await signing_agent(stack, tree)
    content = b"unique telemetry " + tree.env_id.encode()
    meta = metadata(agent, content, kind="telemetry")
    await upload(stack, agent, meta, content)
    blob = stack.settings.blob_dir / "sha256" / meta.sha256[:2] / meta.sha256
    assert blob.exists()
    assert (await stack.call("DELETE", tree.env_path, tree.owner)).status_code == 204
    assert not blob.exists()
    assert await stack.count(ArtifactRow, ArtifactRow.env_id == tree.env_id) == 0
