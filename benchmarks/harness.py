"""Real processes for benchmarks: a control plane started from its console script, a tenant."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

from controlplane.demo import SAMPLE_PLAN

if TYPE_CHECKING:
    from collections.abc import Iterator

BIN = Path(sys.executable).parent
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"

#: Budgets a benchmark never reaches (rate limiting is measured by its own tests).
UNLIMITED = {
    f"BYTEOR_CLOUD_RATE_LIMIT_{bucket}": "100000000/minute"
    for bucket in ("BEARER", "AGENT", "ARTIFACT_UPLOAD", "ANONYMOUS", "ENROLLMENT")
}


#: A small valid pipeline plan (three stages on one ring) the benchmarks deploy: the demo's.
PLAN: dict[str, Any] = {**SAMPLE_PLAN, "name": "bench"}


def console_script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise SystemExit(f"{name} is not installed next to {sys.executable}: pip install -e .")
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
class ControlPlane:
    """A running ``byteor-controlplane serve`` on 127.0.0.1."""

    url: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def cpu_seconds(self) -> float:
        """User plus system CPU of the server process and its children so far."""
        total = 0.0
        for proc in [self.ps, *self.ps.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss_bytes(self) -> int:
        total = 0
        for proc in [self.ps, *self.ps.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A throwaway PostgreSQL database; yields its SQLAlchemy URL."""
    import asyncio

    import asyncpg

    name = f"byteor_bench_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def postgres_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def control_plane(
    data_dir: Path,
    *,
    database_url: str | None = None,
    extra: dict[str, str] | None = None,
    workers: int = 1,
) -> Iterator[ControlPlane]:
    """Start a control plane in ``data_dir`` (``serve --workers``) and wait until it is ready."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = clean_env(
        BYTEOR_CLOUD_DATA_DIR=str(data_dir), BYTEOR_CLOUD_LOG_LEVEL="warning", **UNLIMITED
    )
    if database_url:
        env["BYTEOR_CLOUD_DATABASE_URL"] = database_url
    env.update(extra or {})
    log = data_dir / "server.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [
                console_script("byteor-controlplane"),
                "serve",
                "--port",
                str(port),
                "--workers",
                str(workers),
            ],
            cwd=data_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    cp = ControlPlane(f"http://127.0.0.1:{port}", port, data_dir, process, log, env)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
            try:
                if httpx.get(f"{cp.url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready in 60 s:\n{log.read_text()}")
            time.sleep(0.1)
        yield cp
    finally:
        cp.stop()


@dataclass
class Tenant:
    """An owner token and one org/project/environment on a running control plane."""

    cp: ControlPlane
    token: str
    org_id: str
    project_id: str
    env_id: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def env_path(self) -> str:
        return f"/api/v1/orgs/{self.org_id}/projects/{self.project_id}/environments/{self.env_id}"

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(
            method, self.cp.url + path, headers=self.headers, timeout=60, **kwargs
        )
        if response.status_code >= 300:
            raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None


def bootstrap(cp: ControlPlane, *, env_name: str = "production", **env_body: Any) -> Tenant:
    """The first owner (``bootstrap``), an organization, a project and an environment."""
    result = subprocess.run(
        [console_script("byteor-controlplane"), "bootstrap", "--email", "bench@example.com"],
        cwd=cp.data_dir,
        env=cp.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    token = result.stdout.strip()
    tenant = Tenant(cp, token, "", "", "")
    tenant.org_id = tenant.api("GET", "/api/v1/orgs")["items"][0]["id"]
    tenant.project_id = tenant.api(
        "POST", f"/api/v1/orgs/{tenant.org_id}/projects", json={"name": "bench"}
    )["id"]
    tenant.env_id = tenant.api(
        "POST",
        f"/api/v1/orgs/{tenant.org_id}/projects/{tenant.project_id}/environments",
        json={"name": env_name, **env_body},
    )["id"]
    return tenant
