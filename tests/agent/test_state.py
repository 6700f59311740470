"""The agent state file: round trip, permissions, atomicity, corruption."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import pytest

from agent.state import STATE_FILE, AgentState, StateError, load_state, save_state, state_path
from tests.agent.support import ORG_ID, signed_keyset

KEY = "byteor_ak_SECRET_state_key"


def make_state(**changes: Any) -> AgentState:
    state = AgentState(
        agent_id="agt_1",
        api_key=KEY,
        org_id=ORG_ID,
        project_id="prj_1",
        environment_id="env_1",
        name="web-1",
        keyset=signed_keyset(),
        keyset_version=1,
        enrolled_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    return msgspec.structs.replace(state, **changes)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


class HalfWriter:
    """A file that writes half of what it is given, then fails (a full disk mid-write)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw

    def __enter__(self) -> HalfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.raw.close()

    def fileno(self) -> int:
        return self.raw.fileno()

    def write(self, data: bytes) -> int:
        self.raw.write(data[: len(data) // 2])
        self.raw.flush()
        raise OSError(28, "No space left on device")

    def flush(self) -> None:
        self.raw.flush()


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Prove the modes do not depend on the process umask."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_round_trip(tmp_path: Path) -> None:
    state = make_state(pending_api_key="byteor_ak_SECRET_next")
    path = save_state(tmp_path, state)
    assert path == state_path(tmp_path) == tmp_path / STATE_FILE
    assert load_state(tmp_path) == state


def test_absent_state_is_none(tmp_path: Path) -> None:
    assert load_state(tmp_path / "missing") is None
    assert load_state(tmp_path) is None


@pytest.mark.usefixtures("permissive_umask")
def test_file_is_0600_and_created_dir_is_0700(tmp_path: Path) -> None:
    state_dir = tmp_path / "var" / "lib" / "byteor-agent"
    path = save_state(state_dir, make_state())
    assert mode_of(path) == 0o600
    assert mode_of(state_dir) == 0o700
    # Overwriting keeps the mode.
    save_state(state_dir, make_state(api_key="byteor_ak_SECRET_rotated"))
    assert mode_of(path) == 0o600


def test_overwrite_replaces_the_state(tmp_path: Path) -> None:
    save_state(tmp_path, make_state())
    rotated = make_state(api_key="byteor_ak_SECRET_rotated", keyset_version=2)
    save_state(tmp_path, rotated)
    assert load_state(tmp_path) == rotated
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_failed_save_leaves_the_old_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    old = make_state()
    save_state(tmp_path, old)
    before = (tmp_path / STATE_FILE).read_bytes()

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    if failing == "replace":
        monkeypatch.setattr(Path, "replace", boom)
    elif failing == "fsync":
        monkeypatch.setattr(os, "fsync", boom)
    else:
        real_fdopen = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda fd, _mode: HalfWriter(real_fdopen(fd, "wb")))

    with pytest.raises(OSError, match="No space left"):
        save_state(tmp_path, make_state(api_key="byteor_ak_SECRET_new"))
    monkeypatch.undo()

    assert (tmp_path / STATE_FILE).read_bytes() == before
    assert load_state(tmp_path) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b'{"agent_id": "agt_1"',
        b"[]",
        b'{"agent_id": "agt_1"}',
    ],
)
def test_corrupt_file_is_a_state_error(tmp_path: Path, content: bytes) -> None:
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(StateError, match="corrupt"):
        load_state(tmp_path)


def test_wrong_types_and_bad_keyset_are_state_errors(tmp_path: Path) -> None:
    save_state(tmp_path, make_state())
    path = tmp_path / STATE_FILE
    document = json.loads(path.read_text())

    path.write_text(json.dumps({**document, "keyset_version": "one"}))
    with pytest.raises(StateError, match="keyset_version"):
        load_state(tmp_path)

    bad_keyset = {**document["keyset"], "payload": {"org_id": ORG_ID}}
    path.write_text(json.dumps({**document, "keyset": bad_keyset}))
    with pytest.raises(StateError) as caught:
        load_state(tmp_path)
    assert KEY not in str(caught.value)


def test_unknown_fields_are_ignored(tmp_path: Path) -> None:
    state = make_state()
    save_state(tmp_path, state)
    path = tmp_path / STATE_FILE
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "written_by": "agent 9.9"}))
    assert load_state(tmp_path) == state


def test_loose_permissions_are_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = save_state(tmp_path, make_state())
    path.chmod(0o644)
    assert load_state(tmp_path) is not None
    assert "readable by other users" in caplog.text
    assert caplog.records[0].levelno == logging.WARNING


def test_repr_hides_secrets() -> None:
    state = make_state(pending_api_key="byteor_ak_SECRET_next")
    text = f"{state!r} {state}"
    assert "SECRET" not in text
    assert "agt_1" in text
