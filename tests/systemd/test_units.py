"""The shipped unit files pass ``systemd-analyze verify`` and score <= 2.5 on ``security``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNITS = ["byteor-agent.service", "byteor-controlplane.service"]
ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(
    ANALYZE is None,
    reason="systemd-analyze is not installed (.ci/run installs the systemd package)",
)


def _installed_copy(unit: str, directory: Path) -> Path:
    """The unit with ExecStart pointing at this venv's console scripts (they must exist)."""
    text = (ROOT / "systemd" / unit).read_text()
    bin_dir = Path(sys.executable).parent
    text = text.replace("/usr/local/bin/", f"{bin_dir}/")
    target = directory / unit
    target.write_text(text)
    return target


@pytest.mark.parametrize("unit", UNITS)
def test_verify(unit: str, tmp_path: Path) -> None:
    path = _installed_copy(unit, tmp_path)
    result = subprocess.run(
        [str(ANALYZE), "verify", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure_at_most_2_5(unit: str, tmp_path: Path) -> None:
    path = _installed_copy(unit, tmp_path)
    result = subprocess.run(
        [str(ANALYZE), "security", "--offline=yes", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.5


def test_agent_unit_shape() -> None:
    text = (ROOT / "systemd" / "byteor-agent.service").read_text()
    for line in (
        "Type=notify",
        "StateDirectory=byteor-agent",
        "EnvironmentFile=-/etc/byteor/agent.env",
        "Restart=on-failure",
    ):
        assert line in text
    assert re.search(r"^WatchdogSec=\d+", text, re.M)
