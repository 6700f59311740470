"""Running the operator's health check and activation commands, bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import signal
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["run_command"]

#: Agent secrets that never reach the operator's commands.
_SECRET_VARIABLES: Final = frozenset({"BYTEOR_AGENT_API_KEY", "BYTEOR_ENROLLMENT_TOKEN"})

logger = logging.getLogger("byteor.agent.activation")


def _kill(process: asyncio.subprocess.Process) -> None:
    # The command runs in its own session: kill its whole process group (``sh -c`` children too).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()


async def run_command(
    what: str, command: str, *, extra_env: Mapping[str, str], seconds: float
) -> str | None:
    """Run ``command`` (split with :func:`shlex.split`, no shell) and wait for it.

    The command inherits the agent's environment without its secrets, plus ``extra_env``; its
    output goes to the agent's own stdout/stderr (the journal). On timeout (or cancellation) its
    process group is killed.

    Args:
        what: What the command is for (``"health check"``), for messages.
        command: The command line.
        extra_env: Variables to add (``BYTEOR_BUNDLE_DIR`` ...).
        seconds: Seconds to wait for it.

    Returns:
        ``None`` when it exited with status 0, otherwise why it failed.
    """
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return f"{what} command cannot be parsed: {exc}"
    if not argv:
        return f"{what} command is empty"
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_VARIABLES} | dict(extra_env)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, env=env, start_new_session=True
        )
    except OSError as exc:
        return f"{what} command {argv[0]!r} could not start: {exc.strerror or exc}"
    logger.info("running %s command %s (pid %d)", what, argv[0], process.pid)
    try:
        async with asyncio.timeout(seconds):
            status = await process.wait()
    except TimeoutError:
        _kill(process)
        await process.wait()
        return f"{what} command timed out after {seconds:g}s"
    finally:
        if process.returncode is None:  # cancelled: do not leave it running
            _kill(process)
    if status != 0:
        return f"{what} command exited with status {status}"
    return None
