"""Blobs are shared by content: a delete removes only the blobs nothing else references."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.db.models import ArtifactRow, ConfigBundleRow
from tests.conftest import Stack, Tree
from tests.controlplane.artifacts.kit import metadata, signing_agent, upload
from tests.controlplane.bundles.test_bundles import build, promote
from tests.controlplane.pipelines.plans import SINGLE_RING

pytestmark = pytest.mark.anyio


def blob_path(stack: Stack, digest: str) -> Path:
    hex_digest = digest.removeprefix("sha256:")
    return stack.settings.blob_dir / "sha256" / hex_digest[:2] / hex_digest


async def built_bundle(stack: Stack, tree: Tree) -> dict[str, str]:
    version = await promote(stack, tree, {**SINGLE_RING, "name": stack.unique("gc")})
    return await build(stack, tree, version["id"])


async def test_a_blob_another_environment_still_uses_survives_the_delete(stack: Stack) -> None:
    bundles = await stack.tree()
    bundle = await built_bundle(stack, bundles)
    blob = blob_path(stack, bundle["digest"])
    archive = blob.read_bytes()
    # An agent elsewhere uploads the very same bytes: one blob, referenced from two places.
    artifacts = await stack.tree(owner=bundles.owner)
    agent = await signing_agent(stack, artifacts)
    meta = metadata(agent, archive, kind="telemetry")
    uploaded = await upload(stack, agent, meta, archive)
    assert uploaded.status_code == 201, uploaded.text
    assert "sha256:" + meta.sha256 == bundle["digest"]

    deleted = await stack.call("DELETE", bundles.project_path, bundles.owner)
    assert deleted.status_code == 204
    assert await stack.count(ConfigBundleRow, ConfigBundleRow.id == bundle["id"]) == 0
    assert blob.exists()
    content = await stack.call(
        "GET",
        f"{artifacts.env_path}/artifacts/{uploaded.json()['artifact_id']}/content",
        artifacts.owner,
    )
    assert content.status_code == 200
    assert content.content == archive

    # Once the last reference goes, so does the blob.
    assert (await stack.call("DELETE", artifacts.env_path, artifacts.owner)).status_code == 204
    assert not blob.exists()


async def test_deleting_a_project_removes_its_blobs(stack: Stack) -> None:
    tree = await stack.tree()
    bundle = await built_bundle(stack, tree)
    agent = await signing_agent(stack, tree)
    content = b"telemetry only this project holds " + tree.project_id.encode()
    meta = metadata(agent, content, kind="telemetry")
    assert (await upload(stack, agent, meta, content)).status_code == 201
    blobs = [blob_path(stack, bundle["digest"]), blob_path(stack, "sha256:" + meta.sha256)]
    assert all(b.exists() for b in blobs)

    assert (await stack.call("DELETE", tree.project_path, tree.owner)).status_code == 204
    assert [b.exists() for b in blobs] == [False, False]
    assert await stack.count(ArtifactRow, ArtifactRow.env_id == tree.env_id) == 0
