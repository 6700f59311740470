"""``byteor-agent``: enroll a host, run the daemon, show its status, spool an artifact.

Exit codes: 0 success; 1 the control plane refused or could not be reached (or the spool refused
the artifact); 2 bad settings or usage (including a missing file or a bad ``--kind``); 3 not
enrolled (``status``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from agent.client import ControlPlaneClient
from agent.config import AgentConfig, SettingsError, load_config
from agent.daemon import Agent
from agent.enrollment import EnrollmentError, ensure_enrolled
from agent.errors import AgentError
from agent.spool import SpoolError
from agent.state import load_state
from agent.status import read_status
from agent.uploads import open_spool
from shared import __version__
from shared.artifacts import ARTIFACT_KINDS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from agent.settings import LocalSettings

__all__ = ["main"]

logger = logging.getLogger("byteor.agent")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_ENROLLED = 3


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        stream=sys.stderr,
        format="level=%(levelname)s logger=%(name)s msg=%(message)s",
    )
    # httpx logs every request URL at INFO; the agent logs what matters itself.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def _settings(env_file: Path | None) -> AgentConfig | None:
    # Read in a helper process: the daemon never holds pydantic (see agent.config).
    try:
        return load_config(env_file)
    except SettingsError as exc:
        print(exc, file=sys.stderr)  # noqa: T201
        return None


async def _enroll(settings: AgentConfig) -> int:
    async with ControlPlaneClient(settings) as client:
        state, enrolled = await ensure_enrolled(settings, client)
    verb = "enrolled" if enrolled else "already enrolled"
    print(f"{verb}: agent {state.agent_id} ({state.name}) in environment {state.environment_id}")  # noqa: T201
    return 0


async def _run(settings: AgentConfig) -> int:
    async with ControlPlaneClient(settings) as client:
        agent = Agent(settings, client)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: asyncio.ensure_future(agent.shutdown()))
        await agent.run()
    return 0


def _status(state_dir: Path, as_json: bool) -> int:
    state = load_state(state_dir)
    runtime = read_status(state_dir)
    if state is None:
        message = {"enrolled": False, "state_dir": str(state_dir)}
        if as_json:
            print(msgspec.json.encode(message).decode())  # noqa: T201
        else:
            print(f"not enrolled (no agent.json in {state_dir})")  # noqa: T201
        return EXIT_NOT_ENROLLED
    info: dict[str, object] = {
        "enrolled": True,
        "agent_id": state.agent_id,
        "name": state.name,
        "org_id": state.org_id,
        "project_id": state.project_id,
        "environment_id": state.environment_id,
        "keyset_version": state.keyset_version,
        "enrolled_at": state.enrolled_at,
    }
    if runtime is not None:
        info |= {
            "daemon_state": runtime.state,
            "pid": runtime.pid,
            "last_heartbeat_at": runtime.last_heartbeat_at,
            "last_heartbeat_ok": runtime.last_heartbeat_ok,
            "last_error": runtime.last_error,
            "heartbeat_interval_seconds": runtime.heartbeat_interval_seconds,
            "active_deployment_id": runtime.active_deployment_id,
            "active_bundle_digest": runtime.active_bundle_digest,
            "spool_files": runtime.spool_files,
            "spool_bytes": runtime.spool_bytes,
            "dropped_artifacts": runtime.dropped_artifacts,
        }
    if as_json:
        print(msgspec.json.encode(info).decode())  # noqa: T201
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            shown = value.isoformat() if hasattr(value, "isoformat") else value
            print(f"{key:<{width}}  {'-' if shown is None else shown}")  # noqa: T201
    return 0


def _upload(local: LocalSettings, file: Path, kind: str) -> int:
    """Copy ``file`` into the spool; the daemon uploads it (no network needed here)."""
    if not file.is_file():
        print(f"byteor-agent upload: {file}: no such file", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    state = load_state(local.state_dir)
    spool = open_spool(local.state_dir, local.spool_max_bytes, local.spool_max_files)
    entry = spool.add(
        file,
        kind,
        deployment_id=state.active_deployment_id if state else None,
        spec_hash=state.active_spec_hash if state else None,
    )
    print(entry.entry_id)  # noqa: T201
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="byteor-agent", description="ByteOr host agent (settings: BYTEOR_* variables)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--env-file", type=Path, help="a file of BYTEOR_* variables to read too")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("enroll", help="enroll once (exit 0 if enrolled or already enrolled)")
    commands.add_parser("run", help="run the daemon (enrolls first if needed)")
    status = commands.add_parser("status", help="show the agent's identity and last heartbeat")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    upload = commands.add_parser(
        "upload", help="spool a file for upload by the daemon (prints the spool entry id)"
    )
    upload.add_argument("file", type=Path, help="the file to upload (copied into the spool)")
    upload.add_argument("--kind", required=True, choices=ARTIFACT_KINDS, help="artifact kind")
    return parser


def _local_command(args: argparse.Namespace) -> int:
    """``status`` and ``upload``: short-lived, and need no control plane settings."""
    from agent.settings import LocalSettings  # pydantic only for these short-lived commands

    local = LocalSettings.from_env(args.env_file)
    if args.command == "status":
        try:
            return _status(local.state_dir, args.json)
        except AgentError as exc:
            print(f"byteor-agent status: {exc}", file=sys.stderr)  # noqa: T201
            return EXIT_FAILED
    try:
        return _upload(local, args.file, args.kind)
    except (SpoolError, AgentError, OSError) as exc:
        print(f"byteor-agent upload: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``byteor-agent``; returns the process exit code."""
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose)
    if args.command in ("status", "upload"):
        return _local_command(args)
    settings = _settings(args.env_file)
    if settings is None:
        return EXIT_USAGE
    try:
        if args.command == "enroll":
            return asyncio.run(_enroll(settings))
        return asyncio.run(_run(settings))
    except EnrollmentError as exc:
        print(f"byteor-agent {args.command}: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_USAGE
    except AgentError as exc:
        print(f"byteor-agent {args.command}: {exc}", file=sys.stderr)  # noqa: T201
        return EXIT_FAILED
    except KeyboardInterrupt:  # pragma: no cover - signal handlers normally catch it first
        return 0


if __name__ == "__main__":  # pragma: no cover
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
