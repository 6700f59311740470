"""Real processes: ``byteor-controlplane`` started from the installed console script."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent


def console_script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed next to {sys.executable}; run pip install -e .")
    return str(path)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYTEOR_")}
    env.update(extra)
    return env


@dataclass
class Server:
    url: str
    cwd: Path
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


#: Budgets the functional end-to-end tests never reach (rate limiting has its own tests).
GENEROUS_RATE_LIMITS = {
    f"BYTEOR_CLOUD_RATE_LIMIT_{bucket}": "1000000/minute"
    for bucket in ("BEARER", "AGENT", "ARTIFACT_UPLOAD", "ANONYMOUS", "ENROLLMENT")
}


def start_server(
    cwd: Path, env: dict[str, str] | None = None, *, limits: bool = False, port: int | None = None
) -> Server:
    """Start ``byteor-controlplane serve`` (on ``port`` or a free one); ``limits`` keeps budgets."""
    port = port or free_port()
    env = env or clean_env()
    if not limits:
        env = {**GENEROUS_RATE_LIMITS, **env}
    log = cwd / "server.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [console_script("byteor-controlplane"), "serve", "--port", str(port)],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Server(url=f"http://127.0.0.1:{port}", cwd=cwd, process=process, log=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    pytest.fail(f"server not ready in 30 s:\n{log.read_text()}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    running = start_server(tmp_path)
    yield running
    running.stop()
