"""``python -m benchmarks --quick`` runs end to end, so the benchmark suite never rots.

Figures from a quick run on a shared CI machine mean little; what is checked is that every
benchmark ran against real processes, measured its baseline in the same run and reported a
ratio. Timing targets live in the benchmarks, never in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {"heartbeat", "fleet", "footprint", "activation", "ingest"}


def test_quick_benchmarks_run_and_report_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "| benchmark | measure | value | baseline | ratio | target | ok |" in result.stdout
    report = json.loads(out.read_text())
    assert report["quick"] is True
    assert set(report["benchmarks"]) == EXPECTED
    for name, figures in report["benchmarks"].items():
        assert "error" not in figures, (name, figures)
    heartbeat = report["benchmarks"]["heartbeat"]
    assert heartbeat["errors"] == 0
    assert heartbeat["heartbeat_ratio"] > 0
