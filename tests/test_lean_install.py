"""A host installs only the agent: the base distribution carries no server package.

Builds this checkout into a fresh virtual environment with ``pip install .`` (no extras), as a
host would, then checks what that environment can and cannot import. Needs the package index
that CI installs from (for the agent's own dependencies).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Packages of the ``server`` extra (and what only they bring in) that a host must not have.
SERVER_PACKAGES = (
    "litestar",
    "sqlalchemy",
    "alembic",
    "uvicorn",
    "aiosqlite",
    "asyncpg",
    "limits",
    "prometheus_client",
    "authlib",
    "joserfc",
    "multipart",
    "click",
    "rich",
)


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BYTEOR_", "PYTHON"))}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def host_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("host") / "venv"
    created = run(sys.executable, "-m", "venv", str(venv))
    assert created.returncode == 0, created.stderr
    installed = run(
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        str(ROOT),
        timeout=900,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def test_the_agent_runs_from_the_base_install(host_venv: Path) -> None:
    result = run(str(host_venv / "bin" / "byteor-agent"), "--help")
    assert result.returncode == 0, result.stderr
    assert "enroll" in result.stdout
    assert "run" in result.stdout


def test_no_server_package_is_importable(host_venv: Path) -> None:
    code = (
        "import importlib.util\n"
        f"print([n for n in {SERVER_PACKAGES!r} if importlib.util.find_spec(n) is not None])\n"
    )
    result = run(str(host_venv / "bin" / "python"), "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_agent_process_loads_only_its_own_stack(host_venv: Path) -> None:
    code = (
        "import sys, pkgutil, importlib, agent\n"
        "for info in pkgutil.walk_packages(agent.__path__, 'agent.'):\n"
        "    importlib.import_module(info.name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        f"set({(*SERVER_PACKAGES, 'controlplane', 'pygments')!r})))\n"
    )
    result = run(str(host_venv / "bin" / "python"), "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_control_plane_command_names_the_missing_extra(host_venv: Path) -> None:
    result = run(str(host_venv / "bin" / "byteor-controlplane"), "serve")
    assert result.returncode == 2
    assert "byteor[server]" in result.stderr
    assert "Traceback" not in result.stderr
