"""Blobs are shared by content: a delete removes only the blobs nothing else references."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.blobs.references import collect_garbage, digests_under
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


async def _telemetry(stack: Stack, tree: Tree, content: bytes) -> str:
    agent = await signing_agent(stack, tree)
    meta = metadata(agent, content, kind="telemetry")
    assert (await upload(stack, agent, meta, content)).status_code == 201
    return "sha256:" + meta.sha256


async def test_the_blobs_under_a_project_or_environment_are_its_own_and_no_more(
    stack: Stack,
) -> None:
    """What a delete considers removing: the blobs of the rows under what is deleted, not those
    of a neighbouring project of the same organization, nor of another environment."""
    mine = await stack.tree()
    bundle = await built_bundle(stack, mine)
    telemetry = await _telemetry(stack, mine, b"telemetry of " + mine.project_id.encode())
    neighbour = await stack.ok(
        "POST", f"/api/v1/orgs/{mine.org_id}/projects", mine.owner, json={"name": "neighbour"}
    )
    neighbour_env = await stack.ok(
        "POST",
        f"/api/v1/orgs/{mine.org_id}/projects/{neighbour['id']}/environments",
        mine.owner,
        json={"name": "production"},
    )
    theirs = Tree(mine.owner, mine.org_id, neighbour["id"], neighbour_env["id"])
    their_bundle = await built_bundle(stack, theirs)
    their_telemetry = await _telemetry(stack, theirs, b"telemetry of " + theirs.project_id.encode())

    async with stack.database.sessionmaker() as session:
        assert await digests_under(session, project_id=mine.project_id) == {
            bundle["digest"],
            telemetry,
        }
        assert await digests_under(session, env_id=theirs.env_id) == {
            their_bundle["digest"],
            their_telemetry,
        }
        assert await digests_under(session, project_id="prj_none") == set()


async def test_collecting_garbage_counts_only_the_blobs_it_removed(stack: Stack) -> None:
    tree = await stack.tree()
    bundle = await built_bundle(stack, tree)
    telemetry = await _telemetry(stack, tree, b"telemetry " + tree.env_id.encode())
    orphan = "sha256:" + "0" * 64  # referenced by no row, and held by no file
    blobs = stack.app.state.blobs
    async with stack.database.sessionmaker() as session:
        # Both still referenced: nothing goes.
        assert await collect_garbage(session, blobs, {bundle["digest"], telemetry, orphan}) == 0
        assert await collect_garbage(session, blobs, set()) == 0
    assert blob_path(stack, bundle["digest"]).exists()
    assert blob_path(stack, telemetry).exists()

    # Two blobs no row references (left by a crash, say) and one still referenced: two go.
    stray = [blobs.put_bytes(b"stray %d" % n)[0] for n in range(2)]
    async with stack.database.sessionmaker() as session:
        assert await collect_garbage(session, blobs, {*stray, bundle["digest"], orphan}) == 2
    assert [blobs.exists(d) for d in stray] == [False, False]
    assert blob_path(stack, bundle["digest"]).exists()

    assert (await stack.call("DELETE", tree.env_path, tree.owner)).status_code == 204
    assert not blob_path(stack, bundle["digest"]).exists()  # the delete collected them
    async with stack.database.sessionmaker() as session:
        assert await collect_garbage(session, blobs, {bundle["digest"], telemetry}) == 0
