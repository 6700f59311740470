"""``byteor-controlplane demo``: a control plane on SQLite and one local agent, end to end.

Everything runs as real processes on 127.0.0.1 in a temporary directory: ``serve``, ``bootstrap``,
the REST calls an operator makes, and ``byteor-agent run`` with only ``BYTEOR_*`` settings.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import httpx

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ["run_demo"]

HEARTBEAT_SECONDS = "2"


def _script(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise RuntimeError(f"{name} is not installed; run `pip install .` first")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYTEOR_")}
    env.update(extra)
    return env


def _wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            value = predicate()
            if value:
                return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


@contextlib.contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603 - our own console scripts
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class _Api:
    def __init__(self, base: str, token: str) -> None:
        self.client = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.client.request(method, path, **kwargs)
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path} -> {response.status_code}: {response.text}")
        return response.json() if response.content else None


def run_demo(*, once: bool, keep: bool, out: TextIO = sys.stdout) -> int:
    """Run the demo; with ``once`` stop as soon as the agent is online, else until Ctrl-C."""

    def say(message: str) -> None:
        print(message, file=out, flush=True)

    root = Path(tempfile.mkdtemp(prefix="byteor-demo-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    server_env = _clean_env(
        BYTEOR_CLOUD_DATA_DIR=str(root / "controlplane"),
        BYTEOR_CLOUD_AGENT_HEARTBEAT_INTERVAL_SECONDS=HEARTBEAT_SECONDS,
        BYTEOR_CLOUD_HEARTBEAT_FLUSH_SECONDS="1",
    )
    say(f"[1/6] working directory {root}")
    try:
        with _process(
            [_script("byteor-controlplane"), "serve", "--port", str(port)],
            server_env,
            root / "controlplane.log",
        ) as server:
            _wait(
                lambda: (
                    server.poll() is None
                    and httpx.get(f"{url}/readyz", timeout=2).status_code == 200
                ),
                30,
                "the control plane to become ready",
            )
            say(f"[2/6] control plane ready at {url} (SQLite in {root / 'controlplane'})")
            token = subprocess.run(  # noqa: S603 - our own console script
                [
                    _script("byteor-controlplane"),
                    "bootstrap",
                    "--email",
                    "demo@example.com",
                    "--org",
                    "demo",
                ],
                env=server_env,
                capture_output=True,
                text=True,
                check=True,
                timeout=60,
            ).stdout.strip()
            api = _Api(url, token)
            org = api.call("GET", "/api/v1/orgs")["items"][0]
            project = api.call("POST", f"/api/v1/orgs/{org['id']}/projects", json={"name": "demo"})
            env_base = f"/api/v1/orgs/{org['id']}/projects/{project['id']}/environments"
            environment = api.call("POST", env_base, json={"name": "local"})
            env_path = f"{env_base}/{environment['id']}"
            say(
                f"[3/6] bootstrapped owner demo@example.com; created {org['id']} > "
                f"{project['id']} > {environment['id']}"
            )
            enrollment = api.call("POST", f"{env_path}/enrollment-tokens", json={"max_uses": 1})
            say(f"[4/6] enrollment token {enrollment['id']} (single use) created")
            agent_env = _clean_env(
                BYTEOR_API_BASE_URL=url,
                BYTEOR_ENROLLMENT_TOKEN=enrollment["token"],
                BYTEOR_ORG_ID=org["id"],
                BYTEOR_PROJECT_ID=project["id"],
                BYTEOR_ENVIRONMENT_ID=environment["id"],
                BYTEOR_AGENT_NAME="demo-agent",
                BYTEOR_STATE_DIR=str(root / "agent"),
                BYTEOR_SPEC=str(root / "agent" / "spec.kv"),
            )
            with _process([_script("byteor-agent"), "run"], agent_env, root / "agent.log") as agent:
                say("[5/6] started byteor-agent run (enrolls once, then heartbeats)")

                def online_agent() -> dict[str, Any] | None:
                    if agent.poll() is not None:
                        raise RuntimeError(
                            f"the agent exited with {agent.returncode}; see {root / 'agent.log'}"
                        )
                    items = api.call("GET", f"{env_path}/agents")["items"]
                    return next((a for a in items if a["status"] == "online"), None)

                record = _wait(online_agent, 60, "the agent to come online")
                resources = record["resources"] or {}
                say(
                    f"[6/6] agent {record['name']} ({record['id']}) is {record['status']}: "
                    f"last heartbeat {record['last_heartbeat_at']}, "
                    f"cpu {resources.get('cpu_percent', 0):.1f}%, "
                    f"memory {resources.get('memory_percent', 0):.1f}%"
                )
                if once:
                    return 0
                say("Heartbeats every 2 s; press Ctrl-C to stop.")
                with contextlib.suppress(KeyboardInterrupt):
                    while agent.poll() is None and server.poll() is None:
                        time.sleep(5)
                        latest = api.call("GET", f"{env_path}/agents/{record['id']}")
                        say(f"  {latest['status']:<7} last heartbeat {latest['last_heartbeat_at']}")
                say("stopping the agent and the control plane")
        return 0
    finally:
        if keep:
            say(f"kept {root} (logs: controlplane.log, agent.log)")
        else:
            shutil.rmtree(root, ignore_errors=True)
