"""The on-disk upload spool, on real files: durability, ordering, bounds, the outbox."""

from __future__ import annotations

import hashlib
import os
import stat
import time
import tracemalloc
from pathlib import Path

import msgspec
import pytest

from agent.spool import (
    DROPS_FILE,
    ArtifactTooLarge,
    Spool,
    SpoolEntry,
    outbox_kind,
)

MIB = 1024 * 1024


def spool(tmp_path: Path, max_bytes: int = 10 * MIB, max_files: int = 100) -> Spool:
    return Spool(tmp_path / "spool", max_bytes, max_files)


def make_old(path: Path, seconds: float = 60) -> None:
    when = time.time() - seconds
    os.utime(path, (when, when))


def test_add_writes_data_and_metadata_and_lists_oldest_first(tmp_path: Path) -> None:
    s = spool(tmp_path)
    first = s.add(b"one", "telemetry", deployment_id="dep_1", spec_hash="h1", filename="a.json")
    second = s.add(b"two", "incident", filename="b.tar.gz")
    assert [e.entry_id for e in s.entries()] == [first.entry_id, second.entry_id]
    assert first.entry_id < second.entry_id
    assert first.sha256 == hashlib.sha256(b"one").hexdigest()
    assert first.size == 3
    assert first.captured_at.utcoffset() is not None
    assert first.idempotency_key != second.idempotency_key
    assert (first.deployment_id, first.spec_hash, first.filename) == ("dep_1", "h1", "a.json")
    assert s.data_path(first.entry_id).read_bytes() == b"one"
    stored = msgspec.json.decode((s.root / f"{first.entry_id}.json").read_bytes(), type=SpoolEntry)
    assert stored == first
    assert stat.S_IMODE(s.data_path(first.entry_id).stat().st_mode) == 0o600
    assert stat.S_IMODE(s.root.stat().st_mode) == 0o700
    assert s.stats() == (2, 6)

    s.remove(first.entry_id)
    assert [e.entry_id for e in s.entries()] == [second.entry_id]
    assert not s.data_path(first.entry_id).exists()
    assert not (s.root / f"{first.entry_id}.json").exists()
    # A reopened spool sees the same entries (the idempotency key is persisted).
    assert spool(tmp_path).entries() == [second]


def test_add_copies_a_file_and_leaves_the_source(tmp_path: Path) -> None:
    source = tmp_path / "report.bin"
    source.write_bytes(b"x" * 1000)
    entry = spool(tmp_path).add(source, "incident")
    assert source.exists()
    assert entry.filename == "report.bin"
    assert entry.size == 1000


def test_filename_is_sanitized(tmp_path: Path) -> None:
    entry = spool(tmp_path).add(b"x", "telemetry", filename="../../etc/pass\nwd")
    assert entry.filename == "pass_wd"


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kind"):
        spool(tmp_path).add(b"x", "logs")


def test_crash_leftovers_are_cleaned_on_open(tmp_path: Path) -> None:
    s = spool(tmp_path)
    kept = s.add(b"kept", "telemetry")
    root = s.root
    (root / "00000000000000000001-deadbeef.data").write_bytes(b"half-written")  # no .json
    (root / ".tmp-00000000000000000002-cafebabe").write_bytes(b"partial copy")
    (root / "00000000000000000003-0badf00d.json").write_bytes(b"{}")  # no .data

    reopened = spool(tmp_path)
    assert reopened.entries() == [kept]
    assert sorted(p.name for p in root.iterdir() if p.name != ".lock") == sorted(
        [f"{kept.entry_id}.data", f"{kept.entry_id}.json"]
    )


def test_unreadable_metadata_is_quarantined_not_lost(tmp_path: Path) -> None:
    s = spool(tmp_path)
    entry = s.add(b"data", "incident")
    (s.root / f"{entry.entry_id}.json").write_bytes(b"not json")
    reopened = spool(tmp_path)
    assert reopened.entries() == []
    assert (reopened.rejected_dir / f"{entry.entry_id}.data").read_bytes() == b"data"


def test_bounds_drop_oldest_telemetry_first_then_incidents(tmp_path: Path) -> None:
    s = spool(tmp_path, max_bytes=100, max_files=4)
    incident_1 = s.add(b"i" * 10, "incident")
    telemetry_1 = s.add(b"t" * 10, "telemetry")
    incident_2 = s.add(b"i" * 10, "incident")
    telemetry_2 = s.add(b"t" * 10, "telemetry")
    assert s.stats() == (4, 40)

    new_1 = s.add(b"n" * 10, "incident")  # max_files: the oldest telemetry goes
    assert [e.entry_id for e in s.entries()] == [
        incident_1.entry_id,
        incident_2.entry_id,
        telemetry_2.entry_id,
        new_1.entry_id,
    ]
    assert telemetry_1.entry_id not in {e.entry_id for e in s.entries()}

    new_2 = s.add(b"n" * 75, "telemetry")  # bytes: telemetry_2 then the oldest incident go
    assert [e.entry_id for e in s.entries()] == [
        incident_2.entry_id,
        new_1.entry_id,
        new_2.entry_id,
    ]
    assert s.stats() == (3, 95)

    # The counts survive a restart and are reset once taken.
    assert spool(tmp_path, 100, 4).drop_counts() == {"incident": 1, "telemetry": 2}
    assert s.take_drop_counts() == {"incident": 1, "telemetry": 2}
    assert s.take_drop_counts() == {}
    assert spool(tmp_path, 100, 4).drop_counts() == {}


def test_acknowledge_drops_keeps_newer_drops(tmp_path: Path) -> None:
    s = spool(tmp_path, max_bytes=100, max_files=1)
    s.add(b"a", "telemetry")
    s.add(b"b", "telemetry")
    reported = s.drop_counts()
    assert reported == {"telemetry": 1}
    s.add(b"c", "telemetry")  # dropped after the report was built
    s.acknowledge_drops(reported)
    assert s.drop_counts() == {"telemetry": 1}
    assert (s.root / DROPS_FILE).exists()


def test_an_artifact_alone_over_the_bound_is_refused_without_dropping(tmp_path: Path) -> None:
    s = spool(tmp_path, max_bytes=100, max_files=10)
    kept = s.add(b"k" * 60, "telemetry")
    with pytest.raises(ArtifactTooLarge, match="100"):
        s.add(b"x" * 101, "incident")
    source = tmp_path / "big.bin"
    source.write_bytes(b"x" * 500)
    with pytest.raises(ArtifactTooLarge):
        s.add(source, "incident")
    assert source.exists()  # a copy that was refused leaves the source alone
    assert s.entries() == [kept]
    assert s.drop_counts() == {}
    assert not [p for p in s.root.iterdir() if p.name.startswith(".tmp-")]


def test_large_file_is_hashed_while_copied_in_constant_memory(tmp_path: Path) -> None:
    source = tmp_path / "big.bin"
    chunk = os.urandom(MIB)
    digest = hashlib.sha256()
    with source.open("wb") as handle:
        for _ in range(24):
            handle.write(chunk)
            digest.update(chunk)
    s = spool(tmp_path, max_bytes=64 * MIB)
    tracemalloc.start()
    try:
        entry = s.add(source, "telemetry")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert entry.size == 24 * MIB
    assert entry.sha256 == digest.hexdigest()
    assert peak < 8 * MIB


def test_outbox_kind_rule() -> None:
    assert outbox_kind(Path("crash.incident.tar.gz")) == "incident"
    assert outbox_kind(Path("incident/anything.bin")) == "incident"
    assert outbox_kind(Path("telemetry/x.incident.tar.gz")) == "incident"
    assert outbox_kind(Path("metrics.json")) == "telemetry"
    assert outbox_kind(Path("sub/incident.tar.gz")) == "telemetry"


def test_ingest_outbox_moves_finished_files_and_skips_the_rest(tmp_path: Path) -> None:
    s = spool(tmp_path)
    outbox = tmp_path / "outbox"
    (outbox / "incident").mkdir(parents=True)
    (outbox / ".hidden").mkdir()
    files = {
        "incident/core.bin": b"core",
        "crash.incident.tar.gz": b"tarball",
        "metrics.json": b"{}",
        ".partial.json": b"{",
        ".hidden/x.bin": b"hidden",
    }
    for name, data in files.items():
        (outbox / name).write_bytes(data)
        make_old(outbox / name)
    (outbox / "fresh.json").write_bytes(b"still being written")
    (outbox / "link.bin").symlink_to(tmp_path / "secret")
    (tmp_path / "secret").write_bytes(b"not for upload")
    make_old(tmp_path / "secret")

    added = s.ingest_outbox(outbox, deployment_id="dep_9", spec_hash="h9")

    by_name = {e.filename: e for e in added}
    assert set(by_name) == {"core.bin", "crash.incident.tar.gz", "metrics.json"}
    assert by_name["core.bin"].kind == "incident"
    assert by_name["crash.incident.tar.gz"].kind == "incident"
    assert by_name["metrics.json"].kind == "telemetry"
    assert by_name["metrics.json"].deployment_id == "dep_9"
    assert s.data_path(by_name["core.bin"].entry_id).read_bytes() == b"core"
    # Moved, not copied; skipped files stay where they are.
    assert not (outbox / "incident/core.bin").exists()
    assert not (outbox / "metrics.json").exists()
    for remaining in (".partial.json", ".hidden/x.bin", "fresh.json", "link.bin"):
        assert (outbox / remaining).is_symlink() or (outbox / remaining).exists()
    assert s.ingest_outbox(outbox) == []


def test_ingest_outbox_custom_kind_and_refused_files_are_kept(tmp_path: Path) -> None:
    s = spool(tmp_path, max_bytes=10)
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (outbox / "small").write_bytes(b"123")
    (outbox / "huge").write_bytes(b"x" * 50)
    for name in ("small", "huge"):
        make_old(outbox / name)
    added = s.ingest_outbox(outbox, lambda _path: "incident")
    assert [(e.filename, e.kind) for e in added] == [("small", "incident")]
    assert not (outbox / "huge").exists()
    rejected = [p.read_bytes() for p in s.rejected_dir.glob("*.data")]
    assert rejected == [b"x" * 50]


def test_missing_outbox_is_nothing_to_do(tmp_path: Path) -> None:
    assert spool(tmp_path).ingest_outbox(tmp_path / "nope") == []


def test_record_attempt_and_reject(tmp_path: Path) -> None:
    s = spool(tmp_path)
    entry = s.add(b"bad", "incident")
    updated = s.record_attempt(entry.entry_id)
    assert updated is not None
    assert updated.attempts == 1
    assert spool(tmp_path).entries()[0].attempts == 1
    target = s.reject(entry.entry_id, "400 bad signature")
    assert target == s.rejected_dir / f"{entry.entry_id}.data"
    assert target.read_bytes() == b"bad"
    note = msgspec.json.decode(
        (s.rejected_dir / f"{entry.entry_id}.json").read_bytes(), type=SpoolEntry
    )
    assert note.rejected_reason == "400 bad signature"
    assert s.entries() == []
    assert s.record_attempt(entry.entry_id) is None


def test_opening_the_spool_first_keeps_the_state_dir_private(tmp_path: Path) -> None:
    import stat

    from agent.uploads import open_spool

    state_dir = tmp_path / "fresh-state"
    open_spool(state_dir, 1 << 20, 10)
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
