"""The agent stays light: it never imports the control plane or its server-side dependencies.

This runs in the full test install, where every server package *is* installed, so it checks the
agent's own imports; ``tests/test_lean_install.py`` checks a host install that has none of them.
"""

from __future__ import annotations

import subprocess
import sys

#: What a host process must never load (click, rich and pygments come in with httpx's CLI).
FORBIDDEN = (
    "controlplane",
    "litestar",
    "sqlalchemy",
    "alembic",
    "uvicorn",
    "aiosqlite",
    "asyncpg",
    "click",
    "rich",
    "pygments",
)


def loaded_after(imports: str, forbidden: tuple[str, ...] = FORBIDDEN) -> list[str]:
    code = (
        "import sys\n"
        f"{imports}\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({forbidden!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return list(eval(result.stdout.strip()))  # noqa: S307 - our own printed list


def test_no_agent_module_imports_the_server_stack() -> None:
    imports = (
        "import pkgutil, importlib, agent\n"
        "for info in pkgutil.walk_packages(agent.__path__, 'agent.'):\n"
        "    importlib.import_module(info.name)\n"
    )
    assert loaded_after(imports) == []


def test_the_daemon_entry_points_import_nothing_of_the_server_stack() -> None:
    assert loaded_after("import agent.cli, agent.daemon, agent.activation") == []


def test_the_check_itself_sees_a_forbidden_import() -> None:
    """Guard the guard: importing the control plane is reported."""
    assert "litestar" in loaded_after("import agent.cli, controlplane.app")


def test_the_daemon_holds_no_pydantic() -> None:
    """pydantic reads the settings in a helper process (``agent.config``); it costs ~9 MiB."""
    pydantic = ("pydantic", "pydantic_core", "pydantic_settings")
    imports = "import agent.cli, agent.daemon, agent.activation, agent.config"
    assert loaded_after(imports, pydantic) == []
    assert loaded_after(imports + ", agent.settings", pydantic) != []  # the check can see it
