"""The garbage-collector thresholds of serve/worker processes: parsed, applied, and wired in."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

import pytest
from pydantic import ValidationError

from controlplane.cli import worker_app
from controlplane.observability.collector import tune_collector
from controlplane.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@pytest.fixture
def collector() -> Iterator[None]:
    """Whatever a test does to the collector is undone (the rest of the suite runs on)."""
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_the_default_thresholds_keep_a_fleet_out_of_full_collections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("BYTEOR_CLOUD_GC_THRESHOLDS", raising=False)
    assert Settings().gc_thresholds == (50_000, 20, 20)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("python", None),
        ("Python", None),
        ("1000, 10, 10", (1000, 10, 10)),
        ("700,10,10", (700, 10, 10)),
    ],
)
def test_thresholds_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, parsed: tuple[int, int, int] | None
) -> None:
    monkeypatch.setenv("BYTEOR_CLOUD_GC_THRESHOLDS", value)
    assert Settings().gc_thresholds == parsed


@pytest.mark.parametrize("value", ["", "1,2", "1,2,3,4", "a,b,c", "0,10,10", "-1,10,10", "none"])
def test_bad_thresholds_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("BYTEOR_CLOUD_GC_THRESHOLDS", value)
    with pytest.raises(ValidationError, match="gc_thresholds"):
        Settings()


@pytest.mark.usefixtures("collector")
def test_tuning_applies_the_thresholds_and_freezes_what_startup_built() -> None:
    gc.unfreeze()
    built = [[n] for n in range(1000)]  # startup's objects: alive, and tracked by the collector
    tune_collector((12_345, 6, 7))
    assert gc.get_threshold() == (12_345, 6, 7)
    assert gc.get_freeze_count() >= len(built)
    scanned = {id(o) for o in gc.get_objects()}  # the generations a collection scans
    assert not [o for o in built if id(o) in scanned]


@pytest.mark.usefixtures("collector")
def test_python_thresholds_are_kept_when_asked() -> None:
    gc.set_threshold(700, 10, 10)
    tune_collector(None)
    assert gc.get_threshold() == (700, 10, 10)
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("collector")
def test_a_serve_worker_process_applies_its_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``serve --workers N`` builds each worker's app with :func:`worker_app`."""
    monkeypatch.setenv("BYTEOR_CLOUD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("BYTEOR_CLOUD_GC_THRESHOLDS", "23456,8,9")
    worker_app()
    assert gc.get_threshold() == (23_456, 8, 9)
