"""Under BYTEOR_REQUIRE_SERVICES=1 (CI) an unreachable PostgreSQL or Redis fails, not skips."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def run_probe(tmp_path: Path, require: bool) -> subprocess.CompletedProcess[str]:
    test = tmp_path / "test_probe.py"
    test.write_text(
        textwrap.dedent(
            """
            import tests.backends as backends

            def test_needs_the_service() -> None:
                backends.service_unavailable("PostgreSQL at nowhere is unreachable: refused")
            """
        )
    )
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if require:
        env["BYTEOR_REQUIRE_SERVICES"] = "1"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            str(test),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_an_unreachable_service_skips_with_its_reason_locally(tmp_path: Path) -> None:
    result = run_probe(tmp_path, require=False)
    assert result.returncode == 0, result.stdout
    assert "1 skipped" in result.stdout
    assert "PostgreSQL at nowhere is unreachable" in result.stdout


def test_an_unreachable_service_fails_when_required(tmp_path: Path) -> None:
    result = run_probe(tmp_path, require=True)
    assert result.returncode == 1, result.stdout
    assert "1 failed" in result.stdout
    assert "BYTEOR_REQUIRE_SERVICES=1" in result.stdout
