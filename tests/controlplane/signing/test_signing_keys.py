from __future__ import annotations

import stat
import time

import msgspec
import pytest
from sqlalchemy import select

from controlplane.db.models import SigningKeyRow
from shared.roles import Role
from shared.signing import Envelope, decode_keyset, verify_envelope, verify_keyset_update
from tests.conftest import Stack, Tree
from tests.controlplane.bundles.test_bundles import build, promote

pytestmark = pytest.mark.anyio


async def test_first_need_creates_one_key_and_a_self_signed_set(stack: Stack, tree: Tree) -> None:
    keys = await stack.ok("GET", f"{tree.org_path}/signing-keys", tree.owner)
    assert len(keys["keys"]) == 1
    assert keys["keys"][0]["active"] is True
    keyset = decode_keyset(msgspec.convert(keys["keyset"], Envelope))
    assert keyset.version == 1
    assert keyset.org_id == tree.org_id
    assert [k.kid for k in keyset.keys] == [keys["keys"][0]["kid"]]
    again = await stack.ok("GET", f"{tree.org_path}/signing-keys", tree.owner)
    assert again == keys


async def test_private_keys_are_sealed_at_rest(stack: Stack, tree: Tree) -> None:
    await stack.ok("GET", f"{tree.org_path}/signing-keys", tree.owner)
    async with stack.database.sessionmaker() as session:
        row = await session.scalar(select(SigningKeyRow).where(SigningKeyRow.org_id == tree.org_id))
    assert row is not None
    assert len(row.private_key_sealed) > 60  # nonce + 32-byte key + GCM tag, base64
    kek_file = stack.settings.data_dir / "kek.key"
    assert stat.S_IMODE(kek_file.stat().st_mode) == 0o600


async def test_rotation_overlap_and_trust_chain(stack: Stack, tree: Tree) -> None:
    pinned = decode_keyset(
        msgspec.convert(
            (await stack.ok("GET", f"{tree.org_path}/signing-keys", tree.owner))["keyset"], Envelope
        )
    )
    rotated = await stack.ok(
        "POST", f"{tree.org_path}/signing-keys/rotate", tree.owner, json={"overlap_seconds": 3600}
    )
    assert [k["active"] for k in rotated["keys"]] == [False, True]
    assert rotated["keys"][0]["not_after"] is not None

    now = int(time.time())
    update = msgspec.convert(rotated["keyset"], Envelope)
    new_set = verify_keyset_update(pinned, update, now=now)
    assert new_set.version == 2
    assert {k.kid for k in new_set.keys} == {k["kid"] for k in rotated["keys"]}

    # during the overlap, bundles carry signatures an agent on either key set accepts
    version = await promote(stack, tree)
    bundle = await build(stack, tree, version["id"])
    signature = msgspec.convert(bundle["signature"], Envelope)
    assert len(signature.signatures) == 2
    verify_envelope(signature, pinned, now=now)
    verify_envelope(signature, new_set, now=now)


async def test_rotation_without_overlap_retires_old_key(stack: Stack, tree: Tree) -> None:
    first = await stack.ok("GET", f"{tree.org_path}/signing-keys", tree.owner)
    pinned = decode_keyset(msgspec.convert(first["keyset"], Envelope))
    rotated = await stack.ok(
        "POST", f"{tree.org_path}/signing-keys/rotate", tree.owner, json={"overlap_seconds": 0}
    )
    new_set = verify_keyset_update(
        pinned, msgspec.convert(rotated["keyset"], Envelope), now=int(time.time())
    )
    assert [k.kid for k in new_set.keys] == [rotated["keys"][1]["kid"]]
    version = await promote(stack, tree)
    bundle = await build(stack, tree, version["id"])
    assert [s["kid"] for s in bundle["signature"]["signatures"]] == [rotated["keys"][1]["kid"]]


async def test_rotation_needs_admin(stack: Stack, tree: Tree) -> None:
    deployer = await stack.member(tree, Role.DEPLOYER)
    assert (
        await stack.call("POST", f"{tree.org_path}/signing-keys/rotate", deployer)
    ).status_code == 403
    assert (await stack.call("GET", f"{tree.org_path}/signing-keys", deployer)).status_code == 200
    stranger = await stack.human()
    assert (await stack.call("GET", f"{tree.org_path}/signing-keys", stranger)).status_code == 404
    bad = await stack.call(
        "POST", f"{tree.org_path}/signing-keys/rotate", tree.owner, json={"overlap_seconds": -1}
    )
    assert bad.status_code == 400
