"""The activator on real files: real archives, real signatures, real commands, real crashes."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest

from agent.activation import (
    CRASH_EXIT_CODE,
    JOURNAL_FILE,
    OUTCOME_FILE,
    STATE_KEEPING_REASONS,
    STEPS,
    ActivationOutcome,
    ActivationRefused,
    Activator,
    Journal,
    Step,
)
from agent.activation._verify import digest_hex
from agent.config import AgentConfig
from agent.errors import BundleTooLarge, NotFoundError
from agent.settings import AgentSettings
from agent.state import AgentState, load_state, save_state
from controlplane.bundles.archive import build_bundle_archive
from shared.bundle import BundleFile, BundleManifest, encode_manifest, encode_runtime_config
from shared.deployments import ManifestPayload
from shared.signing import (
    Envelope,
    KeySet,
    encode_envelope,
    new_signing_key,
    public_key_of,
    sign_keyset,
    sign_payload,
)
from shared.spec import compile_plan

pytestmark = pytest.mark.anyio

ORG = "org_test"
ENV = "env_test"
AGENT = "agt_test"
BASE = "http://cp.test"
REPO = Path(__file__).resolve().parents[2]


def plan(name: str = "orders") -> dict[str, Any]:
    return {
        "name": name,
        "target": "SingleRing",
        "stages": [{"id": "decode"}, {"id": "enrich", "depends_on": [0]}],
        "constraints": {"shards": 1, "ordering": "strict"},
        "single_ring": {"producer": "single", "scheduling": "dedicated"},
    }


@dataclass(frozen=True)
class Bundle:
    """A bundle archive and what the manifest says about it."""

    archive: bytes
    spec_kv: str
    spec_hash: str

    @property
    def hex(self) -> str:
        return hashlib.sha256(self.archive).hexdigest()

    @property
    def digest(self) -> str:
        return f"sha256:{self.hex}"


def make_bundle(name: str = "orders", *, env: str = ENV) -> Bundle:
    """A real bundle built by the control plane's own archive builder."""
    compiled = compile_plan(plan(name))
    assert compiled.spec_kv is not None
    assert compiled.spec_hash is not None
    archive = build_bundle_archive(
        org_id=ORG,
        environment_id=env,
        pipeline_version_id="pv_1",
        spec_kv=compiled.spec_kv,
        spec_hash=compiled.spec_hash,
        tuning_profile="default",
        runtime_config={"log_level": "info"},
    )
    return Bundle(archive=archive, spec_kv=compiled.spec_kv, spec_hash=compiled.spec_hash)


def tar_member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE) -> tuple[Any, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.type = kind
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
    return info, data


def raw_archive(members: list[tuple[Any, bytes]]) -> bytes:
    """A gzip tar with exactly ``members`` (for archives the builder would never make)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return gzip.compress(raw.getvalue(), mtime=0)


def hand_made_bundle(
    spec_text: str,
    *,
    spec_hash: str | None = None,
    extra: list[tuple[Any, bytes]] | None = None,
    drop: str | None = None,
) -> Bundle:
    """A bundle with a consistent manifest.json around arbitrary spec text."""
    spec = spec_text.encode()
    runtime = encode_runtime_config({"log_level": "info"})
    claimed = spec_hash or "sha256:" + hashlib.sha256(spec).hexdigest()
    manifest = BundleManifest(
        org_id=ORG,
        environment_id=ENV,
        pipeline_version_id="pv_1",
        spec_hash=claimed,
        tuning_profile="default",
        files=[
            BundleFile(path="spec.kv", sha256=hashlib.sha256(spec).hexdigest(), size=len(spec)),
            BundleFile(
                path="runtime_config.json",
                sha256=hashlib.sha256(runtime).hexdigest(),
                size=len(runtime),
            ),
        ],
    )
    files = {
        "manifest.json": encode_manifest(manifest),
        "spec.kv": spec,
        "runtime_config.json": runtime,
    }
    members = [tar_member(name, data) for name, data in files.items() if name != drop]
    archive = raw_archive(members + (extra or []))
    return Bundle(archive=archive, spec_kv=spec_text, spec_hash=claimed)


@dataclass
class Keys:
    kid: str
    key: Any

    @classmethod
    def new(cls) -> Keys:
        kid, key = new_signing_key()
        return cls(kid, key)

    def keyset(self) -> Envelope:
        document = KeySet(
            org_id=ORG, version=1, keys=[public_key_of(self.kid, self.key)], issued_at=1_700_000_000
        )
        return sign_keyset(document, [(self.kid, self.key)])


def manifest(
    keys: Keys,
    bundle: Bundle,
    sequence: int,
    *,
    action: str = "deploy",
    **changes: Any,
) -> Envelope:
    """A manifest signed by ``keys``; ``changes`` override payload fields."""
    now = int(time.time())
    payload: dict[str, Any] = msgspec.to_builtins(
        ManifestPayload(
            deployment_id=f"dep_{sequence}",
            agent_id=AGENT,
            org_id=ORG,
            environment_id=ENV,
            sequence=sequence,
            bundle_id=f"bnd_{bundle.hex[:8]}",
            bundle_digest=bundle.digest,
            bundle_size=len(bundle.archive),
            spec_hash=bundle.spec_hash,
            issued_at=now,
            expires_at=now + 3600,
            action="rollback" if action == "rollback" else "deploy",
        )
    )
    payload.update(changes)
    return sign_payload(payload, [(keys.kid, keys.key)])


def new_state(keys: Keys) -> AgentState:
    return AgentState(
        agent_id=AGENT,
        api_key="byteor_agk_SECRET",
        org_id=ORG,
        project_id="prj_test",
        environment_id=ENV,
        name="test",
        keyset=keys.keyset(),
        keyset_version=1,
        enrolled_at=datetime.now(UTC),
    )


def write_file(path: Path, data: bytes) -> int:
    path.write_bytes(data)
    return len(data)


@dataclass
class FakeDownload:
    """Serves archives by digest like ``ControlPlaneClient.download_bundle``."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    error: Exception | None = None

    def add(self, bundle: Bundle, data: bytes | None = None) -> None:
        self.blobs[bundle.digest] = bundle.archive if data is None else data

    async def __call__(self, digest: str, destination: Path, max_bytes: int) -> int:
        self.calls.append(digest)
        if self.error is not None:
            raise self.error
        data = self.blobs[digest]
        if len(data) > max_bytes:  # like the client: abort and leave no partial file
            raise BundleTooLarge(f"more than {max_bytes} bytes")
        return write_file(destination, data)


@dataclass
class Host:
    """One agent's state directory, spec file and activator."""

    root: Path
    keys: Keys
    state: AgentState
    download: FakeDownload
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def spec(self) -> Path:
        return self.root / "etc" / "byteor" / "spec.kv"

    @property
    def current(self) -> Path:
        return self.state_dir / "current"

    def settings(self, **overrides: Any) -> AgentConfig:
        values: dict[str, Any] = {
            "api_base_url": BASE,
            "state_dir": self.state_dir,
            "spec": self.spec,
            **self.overrides,
            **overrides,
        }
        return AgentSettings(**values).config()

    def activator(self, **overrides: Any) -> Activator:
        return Activator(self.settings(**overrides))

    async def apply(self, envelope: Envelope, **overrides: Any) -> ActivationOutcome:
        return await self.activator(**overrides).apply(envelope, self.state, self.download)

    async def deploy(self, bundle: Bundle, sequence: int, **overrides: Any) -> ActivationOutcome:
        self.download.add(bundle)
        return await self.apply(manifest(self.keys, bundle, sequence), **overrides)

    def live(self) -> tuple[str | None, bytes | None]:
        """What is active: the ``current`` link target and the spec file's bytes."""
        target = str(self.current.readlink()) if self.current.is_symlink() else None
        spec = self.spec.read_bytes() if self.spec.exists() else None
        return target, spec

    def assert_active(self, bundle: Bundle | None, state: AgentState | None = None) -> None:
        """Exactly ``bundle`` (or nothing) is active: link, spec file and state agree."""
        state = state or self.state
        target, spec = self.live()
        if bundle is None:
            assert target is None
            assert state.active_bundle_digest is None
            return
        assert target == f"bundles/{bundle.hex}"
        assert spec == bundle.spec_kv.encode()
        assert (self.current / "spec.kv").read_bytes() == spec
        assert state.active_bundle_digest == bundle.digest
        assert state.active_spec_hash == bundle.spec_hash

    def assert_clean(self) -> None:
        """No journal and no temporary file is left."""
        assert not (self.state_dir / JOURNAL_FILE).exists()
        downloads = self.state_dir / "downloads"
        assert not downloads.exists() or not any(downloads.iterdir())
        bundles = self.state_dir / "bundles"
        if bundles.exists():
            assert not [p.name for p in bundles.iterdir() if p.name.startswith(".")]

    def stored(self) -> AgentState:
        stored = load_state(self.state_dir)
        assert stored is not None
        return stored


@pytest.fixture
def host(tmp_path: Path) -> Host:
    keys = Keys.new()
    state = new_state(keys)
    save_state(tmp_path / "state", state)
    return Host(root=tmp_path, keys=keys, state=state, download=FakeDownload())


@pytest.fixture(scope="module")
def orders() -> Bundle:
    return make_bundle("orders")


@pytest.fixture(scope="module")
def payments() -> Bundle:
    return make_bundle("payments")


@pytest.fixture
async def host_a(host: Host, orders: Bundle) -> Host:
    """A host where bundle ``orders`` is active at sequence 1."""
    outcome = await host.deploy(orders, 1)
    assert outcome.status == "active"
    return host


# --- the happy path ------------------------------------------------------------------------------


async def test_first_deploy_switches_spec_and_state(host: Host, orders: Bundle) -> None:
    outcome = await host.deploy(orders, 1)

    assert outcome == ActivationOutcome(
        deployment_id="dep_1",
        sequence=1,
        status="active",
        bundle_digest=orders.digest,
        spec_hash=orders.spec_hash,
    )
    host.assert_active(orders)
    host.assert_active(orders, host.stored())
    stored = host.stored()
    assert (stored.last_sequence, stored.active_deployment_id) == (1, "dep_1")
    assert stored.previous_bundle_digest is None
    host.assert_clean()
    unpacked = host.state_dir / "bundles" / orders.hex
    assert sorted(p.name for p in unpacked.iterdir()) == [
        "manifest.json",
        "runtime_config.json",
        "spec.kv",
    ]
    # The outcome stays on disk until the deployment job has reported it.
    assert host.activator().unreported_outcome() == outcome
    host.activator().mark_reported(outcome)
    assert not (host.state_dir / OUTCOME_FILE).exists()


async def test_second_deploy_then_operator_rollback(
    host_a: Host, orders: Bundle, payments: Bundle
) -> None:
    host = host_a
    outcome = await host.deploy(payments, 2)
    assert outcome.status == "active"
    host.assert_active(payments)
    assert host.state.previous_bundle_digest == orders.digest

    rollback = manifest(host.keys, orders, 3, action="rollback")
    outcome = await host.apply(rollback)

    assert (outcome.status, outcome.sequence, outcome.bundle_digest) == (
        "rolled_back",
        3,
        orders.digest,
    )
    assert outcome.to_report().status == "rolled_back"
    host.assert_active(orders)
    host.assert_active(orders, host.stored())
    assert host.spec.read_text() == orders.spec_kv
    assert host.state.previous_bundle_digest == payments.digest
    assert host.state.last_sequence == 3
    # The older bundle was still unpacked: re-verified and reused, not downloaded again.
    assert host.download.calls == [orders.digest, payments.digest]
    host.assert_clean()


async def test_only_active_and_previous_bundles_are_kept(host_a: Host, payments: Bundle) -> None:
    third = make_bundle("third")
    await host_a.deploy(payments, 2)
    await host_a.deploy(third, 3)
    kept = sorted(p.name for p in (host_a.state_dir / "bundles").iterdir())
    assert kept == sorted([payments.hex, third.hex])


async def test_damaged_unpacked_bundle_is_unpacked_again(
    host_a: Host, orders: Bundle, payments: Bundle
) -> None:
    host = host_a
    await host.deploy(payments, 2)
    (host.state_dir / "bundles" / orders.hex / "spec.kv").write_text("tampered\n")
    outcome = await host.apply(manifest(host.keys, orders, 3, action="rollback"))
    assert outcome.status == "rolled_back"
    host.assert_active(orders)
    assert host.download.calls.count(orders.digest) == 2


# --- refusals ------------------------------------------------------------------------------------

Setup = Callable[[Host, Bundle], Envelope]


def flipped_bit(host: Host, new: Bundle) -> Envelope:
    data = bytearray(new.archive)
    data[len(data) // 2] ^= 0x01
    host.download.add(new, bytes(data))
    return manifest(host.keys, new, 2)


def wrong_digest(host: Host, new: Bundle) -> Envelope:
    host.download.blobs["sha256:" + "0" * 64] = new.archive
    return manifest(host.keys, new, 2, bundle_digest="sha256:" + "0" * 64)


def size_too_small(host: Host, new: Bundle) -> Envelope:
    host.download.add(new)
    return manifest(host.keys, new, 2, bundle_size=len(new.archive) - 1)


def size_too_large(host: Host, new: Bundle) -> Envelope:
    host.download.add(new)
    return manifest(host.keys, new, 2, bundle_size=len(new.archive) + 1)


def unknown_key(host: Host, new: Bundle) -> Envelope:
    host.download.add(new)
    return manifest(Keys.new(), new, 2)


def tampered_payload(host: Host, new: Bundle) -> Envelope:
    host.download.add(new)
    envelope = manifest(host.keys, new, 2)
    envelope.payload["bundle_size"] += 1
    return envelope


def replayed(host: Host, new: Bundle) -> Envelope:
    host.download.add(new)
    return manifest(host.keys, new, 1)


def older(host: Host, new: Bundle) -> Envelope:
    host.download.add(new)
    return manifest(host.keys, new, 0)


def expired(host: Host, new: Bundle) -> Envelope:
    host.download.add(new)
    return manifest(host.keys, new, 2, expires_at=int(time.time()) - 60)


def other_environment(host: Host, new: Bundle) -> Envelope:
    host.download.add(new)
    return manifest(host.keys, new, 2, environment_id="env_other")


def other_agent(host: Host, new: Bundle) -> Envelope:
    host.download.add(new)
    return manifest(host.keys, new, 2, agent_id="agt_other")


def other_organization(host: Host, new: Bundle) -> Envelope:
    host.download.add(new)
    return manifest(host.keys, new, 2, org_id="org_other")


def other_kind(host: Host, new: Bundle) -> Envelope:
    host.download.add(new)
    return manifest(host.keys, new, 2, kind="keyset")


def hand_made(bundle: Bundle) -> Setup:
    def setup(host: Host, _new: Bundle) -> Envelope:
        host.download.add(bundle)
        return manifest(host.keys, bundle, 2)

    return setup


def spec_hash_mismatch(host: Host, new: Bundle) -> Envelope:
    host.download.add(new)
    return manifest(host.keys, new, 2, spec_hash="sha256:" + "1" * 64)


def spec_hash_lies(host: Host, new: Bundle) -> Envelope:
    # manifest.json and the signed manifest agree with each other, not with the spec text.
    lying = hand_made_bundle(new.spec_kv, spec_hash="sha256:" + "2" * 64)
    host.download.add(lying)
    return manifest(host.keys, lying, 2)


def corrupt_archive(host: Host, new: Bundle) -> Envelope:
    broken = Bundle(archive=new.archive[:-20] + b"\0" * 20, spec_kv="", spec_hash=new.spec_hash)
    host.download.add(broken)
    return manifest(host.keys, broken, 2)


def too_large_for_settings(host: Host, new: Bundle) -> Envelope:
    host.overrides["max_bundle_bytes"] = len(new.archive) - 1
    host.download.add(new)
    return manifest(host.keys, new, 2)


def download_not_found(host: Host, new: Bundle) -> Envelope:
    host.download.error = NotFoundError("GET /bundles: 404 Not Found", status=404)
    return manifest(host.keys, new, 2)


def health_check_fails(host: Host, new: Bundle) -> Envelope:
    host.overrides["health_check_command"] = "false"
    host.download.add(new)
    return manifest(host.keys, new, 2)


def health_check_times_out(host: Host, new: Bundle) -> Envelope:
    host.overrides |= {"health_check_command": "sleep 5", "health_check_timeout_seconds": 0.3}
    host.download.add(new)
    return manifest(host.keys, new, 2)


VALID = compile_plan(plan("valid")).spec_kv or ""
BAD_SPEC = VALID.replace("pipeline.constraints.shards=1", "pipeline.constraints.shards=0")

REFUSALS: list[tuple[str, Setup, str]] = [
    ("flipped-bit", flipped_bit, "digest_mismatch"),
    ("wrong-digest", wrong_digest, "digest_mismatch"),
    ("size-too-small", size_too_small, "size_mismatch"),
    ("size-too-large", size_too_large, "size_mismatch"),
    ("unknown-key", unknown_key, "unknown_kid"),
    ("tampered-payload", tampered_payload, "bad_signature"),
    ("replayed", replayed, "replayed"),
    ("older-sequence", older, "replayed"),
    ("expired", expired, "expired"),
    ("other-environment", other_environment, "wrong_environment"),
    ("other-agent", other_agent, "wrong_agent"),
    ("other-organization", other_organization, "wrong_organization"),
    ("other-kind", other_kind, "malformed"),
    (
        "dot-dot-member",
        hand_made(hand_made_bundle(VALID, extra=[tar_member("../x", b"evil")])),
        "unsafe_archive",
    ),
    (
        "symlink-member",
        hand_made(
            hand_made_bundle(
                VALID, drop="spec.kv", extra=[tar_member("spec.kv", b"", tarfile.SYMTYPE)]
            )
        ),
        "unsafe_archive",
    ),
    (
        "absolute-member",
        hand_made(hand_made_bundle(VALID, extra=[tar_member("/etc/cron.d/x", b"evil")])),
        "unsafe_archive",
    ),
    (
        "duplicate-member",
        hand_made(hand_made_bundle(VALID, extra=[tar_member("spec.kv", b"again")])),
        "unsafe_archive",
    ),
    ("missing-spec", hand_made(hand_made_bundle(VALID, drop="spec.kv")), "invalid_bundle"),
    (
        "extra-file",
        hand_made(hand_made_bundle(VALID, extra=[tar_member("notes.txt", b"hi")])),
        "invalid_bundle",
    ),
    ("invalid-spec", hand_made(hand_made_bundle(BAD_SPEC)), "spec_invalid"),
    ("unparseable-spec", hand_made(hand_made_bundle("not a spec\n")), "spec_invalid"),
    ("spec-hash-mismatch", spec_hash_mismatch, "spec_hash_mismatch"),
    ("spec-hash-lies", spec_hash_lies, "spec_hash_mismatch"),
    ("corrupt-archive", corrupt_archive, "corrupt_archive"),
    ("too-large", too_large_for_settings, "bundle_too_large"),
    ("download-404", download_not_found, "download_failed"),
    ("health-check-fails", health_check_fails, "health_check_failed"),
    ("health-check-times-out", health_check_times_out, "health_check_failed"),
]


@pytest.mark.parametrize(
    ("setup", "reason"), [pytest.param(s, r, id=name) for name, s, r in REFUSALS]
)
async def test_refusal_leaves_the_active_bundle_untouched(
    host_a: Host, orders: Bundle, payments: Bundle, setup: Setup, reason: str
) -> None:
    host = host_a
    envelope = setup(host, payments)
    before = host.live()
    outcome_before = host.activator().unreported_outcome()

    with pytest.raises(ActivationRefused) as refused:
        await host.apply(envelope)

    assert refused.value.reason == reason
    assert str(refused.value).startswith(f"{reason}: ")
    assert host.live() == before
    host.assert_active(orders)
    host.assert_active(orders, host.stored())
    host.assert_clean()
    assert sorted(p.name for p in (host.state_dir / "bundles").iterdir()) == [orders.hex]
    if reason in STATE_KEEPING_REASONS:
        # Not provably a new manifest for this agent: it must not consume a sequence.
        assert not refused.value.state_changed
        assert host.state.last_sequence == host.stored().last_sequence == 1
        assert host.activator().unreported_outcome() == outcome_before
    else:
        assert refused.value.state_changed
        assert host.state.last_sequence == host.stored().last_sequence == 2
        recorded = host.activator().unreported_outcome()
        assert recorded == refused.value.outcome
        assert recorded is not None
        assert (recorded.status, recorded.sequence, recorded.reason_code) == ("failed", 2, reason)
        report = refused.value.report()
        assert (report.status, report.deployment_id, report.sequence) == ("failed", "dep_2", 2)


@pytest.mark.parametrize(
    ("claims", "deployment_id", "sequence"),
    [
        pytest.param({}, "dep_2", 2, id="as-claimed"),
        pytest.param({"deployment_id": ""}, None, 2, id="empty-deployment-id"),
        pytest.param({"deployment_id": 7}, None, 2, id="non-string-deployment-id"),
        pytest.param({"sequence": True}, "dep_2", None, id="bool-sequence"),
        pytest.param({"sequence": "2"}, "dep_2", None, id="string-sequence"),
    ],
)
def test_a_refusal_carries_the_ids_the_manifest_claims_only_when_well_typed(
    host: Host,
    payments: Bundle,
    claims: dict[str, Any],
    deployment_id: str | None,
    sequence: int | None,
) -> None:
    # Signed by an unknown key: refused before the payload is read, so it is reported (or not) by
    # what it claims to be.
    envelope = manifest(Keys.new(), payments, 2)
    envelope.payload.update(claims)
    with pytest.raises(ActivationRefused) as refused:
        host.activator().verify(envelope, host.state)
    assert refused.value.reason == "unknown_kid"
    assert (refused.value.deployment_id, refused.value.sequence) == (deployment_id, sequence)


@pytest.mark.parametrize(
    ("changes", "reason", "message"),
    [
        pytest.param(
            {"bundle_size": "big"},
            "malformed",
            "not a deployment manifest: Expected `int`, got `str` - at `$.bundle_size`",
            id="not-a-manifest",
        ),
        pytest.param(
            {"kind": "keyset"},
            "malformed",
            "payload kind is 'keyset', not 'deployment_manifest'",
            id="kind",
        ),
        pytest.param(
            {"bundle_digest": "sha256:" + "A" * 64},
            "malformed",
            "bundle_digest or bundle_size is not valid",
            id="digest",
        ),
        pytest.param(
            {"bundle_size": 0}, "malformed", "bundle_digest or bundle_size is not valid", id="size"
        ),
        pytest.param(
            {"agent_id": "agt_other"},
            "wrong_agent",
            "the manifest is for agent 'agt_other'",
            id="agent",
        ),
        pytest.param(
            {"org_id": "org_other"},
            "wrong_organization",
            "the manifest is for org 'org_other'",
            id="organization",
        ),
        pytest.param({"sequence": 0}, "replayed", "sequence 0 is not newer than 0", id="sequence"),
        pytest.param(
            {"expires_at": 1},
            "expired",
            "expired at 1 (now ",
            id="verification-error",
        ),
    ],
)
def test_manifest_refusals_say_what_failed(
    host: Host, payments: Bundle, changes: dict[str, Any], reason: str, message: str
) -> None:
    fields = dict(changes)
    envelope = manifest(host.keys, payments, fields.pop("sequence", 2), **fields)
    with pytest.raises(ActivationRefused) as refused:
        host.activator().verify(envelope, host.state)
    assert refused.value.reason == reason
    assert refused.value.message.startswith(message)
    assert str(refused.value) == f"{reason}: {refused.value.message}"


def test_a_one_byte_bundle_is_a_valid_size(host: Host, payments: Bundle) -> None:
    payload = host.activator().verify(manifest(host.keys, payments, 2, bundle_size=1), host.state)
    assert payload.bundle_size == 1


def test_anything_but_an_envelope_is_refused_as_malformed(host: Host) -> None:
    with pytest.raises(ActivationRefused) as refused:
        host.activator().verify(cast("Any", "not an envelope"), host.state)
    assert (refused.value.reason, refused.value.message) == ("malformed", "not an Envelope")
    assert (refused.value.deployment_id, refused.value.sequence) == (None, None)


def test_a_damaged_pinned_key_set_refuses_every_manifest(host: Host, payments: Bundle) -> None:
    damaged = Envelope(payload={"org_id": ORG}, signatures=host.state.keyset.signatures)
    state = msgspec.structs.replace(host.state, keyset=damaged)
    with pytest.raises(ActivationRefused) as refused:
        host.activator().verify(manifest(host.keys, payments, 2), state)
    assert refused.value.reason == "malformed"
    assert refused.value.message.startswith("payload is not a key set: ")
    assert (refused.value.deployment_id, refused.value.sequence) == ("dep_2", 2)
    assert not refused.value.state_changed


def test_digest_hex_names_what_is_not_a_digest() -> None:
    assert digest_hex("sha256:" + "ab" * 32) == "ab" * 32
    long = "sha256:" + "g" * 100
    with pytest.raises(ValueError) as caught:
        digest_hex(long)
    assert str(caught.value) == f"not a sha256 digest: {long[:80]!r}"


async def test_unsafe_member_message_names_it(host_a: Host) -> None:
    bundle = hand_made_bundle(VALID, extra=[tar_member("../x", b"evil")])
    host_a.download.add(bundle)
    with pytest.raises(ActivationRefused, match=r"unsafe_archive: member '\.\./x' escapes"):
        await host_a.apply(manifest(host_a.keys, bundle, 2))
    assert not (host_a.state_dir / "x").exists()


async def test_decompression_bomb_is_refused(host_a: Host) -> None:
    bomb = hand_made_bundle(VALID, extra=[tar_member("zeros", b"\0" * 300_000)])
    host_a.download.add(bomb)
    with pytest.raises(ActivationRefused) as refused:
        await host_a.apply(manifest(host_a.keys, bomb, 2), max_bundle_bytes=len(bomb.archive) + 10)
    assert refused.value.reason == "unsafe_archive"


async def test_refused_first_deploy_leaves_nothing_active(host: Host, payments: Bundle) -> None:
    host.download.add(payments)
    with pytest.raises(ActivationRefused):
        await host.apply(manifest(host.keys, payments, 1), health_check_command="false")
    host.assert_active(None)
    assert not host.spec.exists()


# --- commands ------------------------------------------------------------------------------------


async def test_activation_failure_rolls_back_to_the_previous_bundle(
    host_a: Host, orders: Bundle, payments: Bundle
) -> None:
    outcome = await host_a.deploy(payments, 2, activation_command="false")
    assert (outcome.status, outcome.sequence, outcome.reason_code) == (
        "failed",
        2,
        "activation_failed",
    )
    assert outcome.reason is not None
    assert "exited with status 1" in outcome.reason
    host_a.assert_active(orders)
    host_a.assert_active(orders, host_a.stored())
    assert host_a.stored().last_sequence == 2
    host_a.assert_clean()


async def test_activation_timeout_rolls_back(
    host_a: Host, orders: Bundle, payments: Bundle
) -> None:
    started = time.monotonic()
    outcome = await host_a.deploy(
        payments, 2, activation_command="sleep 5", activation_timeout_seconds=0.5
    )
    assert time.monotonic() - started < 4
    assert outcome.reason_code == "activation_failed"
    assert "timed out after 0.5s" in (outcome.reason or "")
    host_a.assert_active(orders)


async def test_failed_first_activation_restores_an_unmanaged_spec(
    host: Host, payments: Bundle
) -> None:
    host.spec.parent.mkdir(parents=True)
    host.spec.write_text("hand-written\n")
    outcome = await host.deploy(payments, 1, activation_command="false")
    assert outcome.reason_code == "activation_failed"
    assert not host.current.exists()
    assert host.spec.read_text() == "hand-written\n"


async def test_commands_see_the_bundle_but_not_the_agent_secrets(
    host: Host, orders: Bundle, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BYTEOR_AGENT_API_KEY", "byteor_agk_SECRET")
    seen = host.root / "seen.json"
    script = (
        "import json, os, sys; "
        "keys = ['BYTEOR_BUNDLE_DIR', 'BYTEOR_CANDIDATE_SPEC', 'BYTEOR_SPEC', 'BYTEOR_AGENT_API_KEY']; "
        "json.dump({k: os.environ.get(k) for k in keys}, open(sys.argv[1], 'w'))"
    )
    command = f"{sys.executable} -c {script!r} {seen}"
    await host.deploy(orders, 1, activation_command=command)
    env = msgspec.json.decode(seen.read_bytes())
    bundle = host.state_dir.absolute() / "bundles" / orders.hex
    assert env == {
        "BYTEOR_BUNDLE_DIR": str(bundle),
        "BYTEOR_CANDIDATE_SPEC": str(bundle / "spec.kv"),
        "BYTEOR_SPEC": str(host.spec.absolute()),
        "BYTEOR_AGENT_API_KEY": None,
    }


async def test_old_state_files_load_with_deployment_defaults(tmp_path: Path) -> None:
    state = new_state(Keys.new())
    raw = msgspec.to_builtins(state)
    for name in (
        "last_sequence",
        "active_deployment_id",
        "active_bundle_digest",
        "active_spec_hash",
        "previous_bundle_digest",
    ):
        del raw[name]
    (tmp_path / "agent.json").write_bytes(msgspec.json.encode(raw))
    (tmp_path / "agent.json").chmod(0o600)
    loaded = load_state(tmp_path)
    assert loaded is not None
    assert (loaded.last_sequence, loaded.active_bundle_digest) == (0, None)


# --- crashes -------------------------------------------------------------------------------------

CRASH_SCRIPT = """
import asyncio, sys
from pathlib import Path
from agent.activation import Activator
from agent.settings import AgentSettings
from agent.state import load_state
from shared.signing import decode_envelope

root, step = Path(sys.argv[1]), sys.argv[2]
settings = AgentSettings(
    api_base_url="http://cp.test",
    state_dir=root / "state",
    spec=root / "etc" / "byteor" / "spec.kv",
    activation_command="true",
    crash_after_step=step,
).config()
state = load_state(settings.state_dir)

async def download(digest, destination, max_bytes):
    data = (root / "archive.tar.gz").read_bytes()
    destination.write_bytes(data)
    return len(data)

envelope = decode_envelope((root / "manifest.json").read_bytes())
asyncio.run(Activator(settings).apply(envelope, state, download))
sys.exit(0)
"""


def crash_during_apply(host: Host, bundle: Bundle, envelope: Envelope, step: Step) -> None:
    (host.root / "archive.tar.gz").write_bytes(bundle.archive)
    (host.root / "manifest.json").write_bytes(encode_envelope(envelope))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYTEOR_")}
    result = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(host.root), step],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == CRASH_EXIT_CODE, result.stderr
    journal = msgspec.json.decode((host.state_dir / JOURNAL_FILE).read_bytes(), type=Journal)
    assert journal.step == step


@pytest.mark.parametrize("step", STEPS)
async def test_crash_after_each_step_recovers_to_old_or_new(
    host_a: Host, orders: Bundle, payments: Bundle, step: Step
) -> None:
    host = host_a
    crash_during_apply(host, payments, manifest(host.keys, payments, 2), step)

    state = host.stored()
    outcome = await host.activator(activation_command="true").recover(state)

    assert outcome is not None
    assert (outcome.deployment_id, outcome.sequence) == ("dep_2", 2)
    if step == "activated":
        assert (outcome.status, outcome.reason) == ("active", None)
        host.assert_active(payments, state)
        assert state.previous_bundle_digest == orders.digest
    else:
        assert (outcome.status, outcome.reason_code) == ("failed", "interrupted")
        host.assert_active(orders, state)
    host.assert_active(payments if step == "activated" else orders, host.stored())
    assert host.stored().last_sequence == 2
    host.assert_clean()
    assert host.activator().unreported_outcome() == outcome
    # Recovery is done: a second start finds nothing to do.
    assert await host.activator().recover(host.stored()) is None


@pytest.mark.parametrize("step", ["health_checked", "switched"])
async def test_crash_during_first_deploy_leaves_nothing_active(
    host: Host, payments: Bundle, step: Step
) -> None:
    crash_during_apply(host, payments, manifest(host.keys, payments, 1), step)
    state = host.stored()
    outcome = await host.activator().recover(state)
    assert outcome is not None
    assert outcome.reason_code == "interrupted"
    host.assert_active(None, state)
    assert not host.spec.exists()


async def test_corrupt_journal_falls_back_to_the_state(host_a: Host, orders: Bundle) -> None:
    (host_a.state_dir / JOURNAL_FILE).write_text("{not json")
    assert await host_a.activator().recover(host_a.state) is None
    host_a.assert_active(orders)
    host_a.assert_clean()


async def test_no_journal_means_nothing_to_recover(host: Host) -> None:
    assert await host.activator().recover(host.state) is None
