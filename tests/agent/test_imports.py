"""The agent stays light: it never imports the control plane or its server-side dependencies."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("controlplane", "litestar", "sqlalchemy")


def test_agent_does_not_import_the_control_plane() -> None:
    code = (
        "import sys\n"
        "import agent.client, agent.errors, agent.retry, agent.settings, agent.state\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FORBIDDEN!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
