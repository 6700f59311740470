from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import time
from typing import Any

import msgspec
import pytest

from controlplane.db.models import ConfigBundleRow
from shared.signing import Envelope, decode_keyset, verify_envelope
from tests.conftest import Stack, Tree
from tests.controlplane.pipelines.plans import SINGLE_RING

pytestmark = pytest.mark.anyio


async def promote(stack: Stack, tree: Tree, plan: dict[str, Any] = SINGLE_RING) -> dict[str, Any]:
    draft = await stack.ok(
        "POST",
        f"{tree.env_path}/drafts",
        tree.owner,
        json={"name": stack.unique("d"), "plan": plan},
    )
    version: dict[str, Any] = await stack.ok(
        "POST", f"{tree.env_path}/drafts/{draft['id']}/version", tree.owner
    )
    return version


async def build(stack: Stack, tree: Tree, version_id: str) -> dict[str, Any]:
    response = await stack.call(
        "POST",
        f"{tree.env_path}/config-bundles",
        tree.owner,
        json={"pipeline_version_id": version_id},
    )
    assert response.status_code == 202, response.text
    bundle = response.json()
    assert bundle["status"] == "building"
    assert response.headers["location"].endswith(bundle["id"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        current: dict[str, Any] = await stack.ok(
            "GET", f"{tree.env_path}/config-bundles/{bundle['id']}", tree.owner
        )
        if current["status"] != "building":
            return current
        await asyncio.sleep(0.05)
    raise AssertionError(f"bundle {bundle['id']} still building after 20 s")


def unpack(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        members = tar.getmembers()
        return {m.name: tar.extractfile(m).read() for m in members}  # type: ignore[union-attr]


async def test_build_produces_signed_content_addressed_archive(stack: Stack, tree: Tree) -> None:
    await stack.ok(
        "PUT",
        tree.org_path,
        tree.owner,
        json={"runtime_config": {"a": 1, "nested": {"x": 1, "y": 1}, "gone": True}},
    )
    await stack.ok(
        "PUT",
        tree.project_path,
        tree.owner,
        json={"runtime_config": {"nested": {"y": 2}, "gone": None}},
    )
    await stack.ok(
        "PUT",
        tree.env_path,
        tree.owner,
        json={"runtime_config": {"b": [1, 2]}, "tuning_profile": "low-latency"},
    )
    version = await promote(stack, tree)

    bundle = await build(stack, tree, version["id"])

    assert bundle["status"] == "ready", bundle
    assert bundle["spec_hash"] == version["spec_hash"]
    assert bundle["tuning_profile"] == "low-latency"
    merged = {"a": 1, "nested": {"x": 1, "y": 2}, "b": [1, 2]}
    assert bundle["runtime_config"] == merged

    blob = stack.settings.blob_dir / "sha256" / bundle["digest"][7:9] / bundle["digest"][7:]
    data = blob.read_bytes()
    assert bundle["digest"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert bundle["size"] == len(data)

    files = unpack(data)
    assert list(files) == ["manifest.json", "spec.kv", "runtime_config.json"]
    assert files["spec.kv"].decode() == version["spec_kv"]
    assert json.loads(files["runtime_config.json"]) == merged
    manifest = json.loads(files["manifest.json"])
    assert manifest["spec_hash"] == version["spec_hash"]
    assert manifest["environment_id"] == tree.env_id
    for entry in manifest["files"]:
        assert entry["sha256"] == hashlib.sha256(files[entry["path"]]).hexdigest()
        assert entry["size"] == len(files[entry["path"]])

    keys = await stack.ok("GET", f"{tree.org_path}/signing-keys", tree.owner)
    keyset = decode_keyset(msgspec.convert(keys["keyset"], Envelope))
    payload = verify_envelope(
        msgspec.convert(bundle["signature"], Envelope),
        keyset,
        now=int(time.time()),
        expected_environment_id=tree.env_id,
    )
    assert payload["digest"] == bundle["digest"]
    assert payload["size"] == bundle["size"]
    assert payload["bundle_id"] == bundle["id"]
    assert payload["spec_hash"] == version["spec_hash"]


async def test_same_inputs_give_the_same_archive(stack: Stack, tree: Tree) -> None:
    version = await promote(stack, tree)
    first = await build(stack, tree, version["id"])
    second = await build(stack, tree, version["id"])
    assert first["id"] != second["id"]
    assert first["digest"] == second["digest"]

    listed = await stack.ok("GET", f"{tree.env_path}/config-bundles", tree.owner)
    assert [b["id"] for b in listed["items"]] == [first["id"], second["id"]]


async def test_runtime_config_preview_shows_layers(stack: Stack, tree: Tree) -> None:
    await stack.ok(
        "PUT", tree.org_path, tree.owner, json={"runtime_config": {"k": "org", "keep": 1}}
    )
    await stack.ok(
        "PUT", tree.env_path, tree.owner, json={"runtime_config": {"k": "env", "keep": None}}
    )
    preview = await stack.ok("GET", f"{tree.env_path}/runtime-config", tree.owner)
    assert preview["organization"] == {"k": "org", "keep": 1}
    assert preview["environment"] == {"k": "env", "keep": None}
    assert preview["merged"] == {"k": "env"}


async def test_version_of_another_environment_or_org_is_404(stack: Stack, tree: Tree) -> None:
    other_env = await stack.ok(
        "POST", f"{tree.project_path}/environments", tree.owner, json={"name": "staging"}
    )
    other_tree = Tree(tree.owner, tree.org_id, tree.project_id, other_env["id"])
    foreign = await promote(stack, other_tree)
    elsewhere = await stack.tree()
    foreign_org = await promote(stack, elsewhere)
    before = await stack.count(ConfigBundleRow)
    for version_id in (foreign["id"], foreign_org["id"], "ver_missing"):
        response = await stack.call(
            "POST",
            f"{tree.env_path}/config-bundles",
            tree.owner,
            json={"pipeline_version_id": version_id},
        )
        assert response.status_code == 404, response.text
    assert await stack.count(ConfigBundleRow) == before


async def test_bundle_needs_deployer(stack: Stack, tree: Tree) -> None:
    from shared.roles import Role

    version = await promote(stack, tree)
    approver = await stack.member(tree, Role.APPROVER)
    response = await stack.call(
        "POST",
        f"{tree.env_path}/config-bundles",
        approver,
        json={"pipeline_version_id": version["id"]},
    )
    assert response.status_code == 403
    listed = await stack.call("GET", f"{tree.env_path}/config-bundles", approver)
    assert listed.status_code == 200


async def test_deleting_the_environment_removes_rows_and_blobs(stack: Stack, tree: Tree) -> None:
    plan = {**SINGLE_RING, "name": stack.unique("only-here")}
    version = await promote(stack, tree, plan)
    bundle = await build(stack, tree, version["id"])
    blob = stack.settings.blob_dir / "sha256" / bundle["digest"][7:9] / bundle["digest"][7:]
    assert blob.exists()

    assert (await stack.call("DELETE", tree.env_path, tree.owner)).status_code == 204

    assert await stack.count(ConfigBundleRow, ConfigBundleRow.env_id == tree.env_id) == 0
    assert not blob.exists()


async def test_blob_shared_with_another_environment_survives(stack: Stack, tree: Tree) -> None:
    plan = {**SINGLE_RING, "name": stack.unique("shared")}
    doomed = await stack.tree(owner=tree.owner)
    # identical inputs (same ids aside) would differ by environment id in the manifest, so the
    # second bundle is built in the same environment; delete a *project* that holds no bundles.
    version = await promote(stack, tree, plan)
    bundle = await build(stack, tree, version["id"])
    blob = stack.settings.blob_dir / "sha256" / bundle["digest"][7:9] / bundle["digest"][7:]
    assert (await stack.call("DELETE", doomed.project_path, tree.owner)).status_code == 204
    assert blob.exists()
