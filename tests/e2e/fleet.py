"""Helpers for end-to-end tests that run a control plane and agents as real processes."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import Server, clean_env, console_script, free_port

FAST_AGENT_SERVER_ENV = {
    "BYTEOR_CLOUD_AGENT_HEARTBEAT_INTERVAL_SECONDS": "1",
    "BYTEOR_CLOUD_HEARTBEAT_FLUSH_SECONDS": "0.3",
}


@dataclass
class Tenant:
    """An owner token and an org/project/environment on a running server."""

    server: Server
    token: str
    org_id: str
    project_id: str
    env_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def env_url(self) -> str:
        return (
            f"{self.server.url}/api/v1/orgs/{self.org_id}/projects/{self.project_id}"
            f"/environments/{self.env_id}"
        )

    def api(self, method: str, url: str, **kwargs: Any) -> Any:
        response = httpx.request(method, url, headers=self.headers, timeout=10, **kwargs)
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def enrollment_token(self, max_uses: int = 1) -> dict[str, Any]:
        created: dict[str, Any] = self.api(
            "POST", f"{self.env_url}/enrollment-tokens", json={"max_uses": max_uses}
        )
        return created

    def agents(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.api("GET", f"{self.env_url}/agents")["items"]
        return items

    def token_uses(self, token_id: str) -> int:
        tokens = self.api("GET", f"{self.env_url}/enrollment-tokens")
        return int(next(t["uses"] for t in tokens if t["id"] == token_id))


def bootstrap_tenant(server: Server) -> Tenant:
    result = subprocess.run(
        [console_script("byteor-controlplane"), "bootstrap", "--email", "ops@example.com"],
        cwd=server.cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = result.stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}
    org = httpx.get(f"{server.url}/api/v1/orgs", headers=headers).json()["items"][0]["id"]
    project = httpx.post(
        f"{server.url}/api/v1/orgs/{org}/projects", headers=headers, json={"name": "edge"}
    ).json()["id"]
    env = httpx.post(
        f"{server.url}/api/v1/orgs/{org}/projects/{project}/environments",
        headers=headers,
        json={"name": "production"},
    ).json()["id"]
    return Tenant(server=server, token=token, org_id=org, project_id=project, env_id=env)


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    log: Path
    state_dir: Path

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_agent(directory: Path, env: dict[str, str], name: str = "agent") -> AgentProcess:
    log = directory / f"{name}.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [console_script("byteor-agent"), "run"],
            env=clean_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return AgentProcess(process=process, log=log, state_dir=Path(env["BYTEOR_STATE_DIR"]))


def wait_for(predicate: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class ThrottlingProxy:
    """A real HTTP proxy on 127.0.0.1 that answers heartbeats with 429 until ``open_at``."""

    upstream: str
    retry_after: int
    throttle_seconds: float
    started: float = field(default_factory=time.monotonic)
    heartbeats: list[tuple[float, int]] = field(default_factory=list)
    #: (seconds since start, Retry-After) of every 429 the upstream answered a heartbeat with.
    upstream_refusals: list[tuple[float, float]] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                return

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                elapsed = time.monotonic() - proxy.started
                if self.path.endswith("/heartbeat") and elapsed < proxy.throttle_seconds:
                    proxy.heartbeats.append((elapsed, 429))
                    payload = b'{"type":"urn:byteor:problem:rate-limited","title":"Too Many Requests","status":429}'
                    self.send_response(429)
                    self.send_header("Retry-After", str(proxy.retry_after))
                    self.send_header("Content-Type", "application/problem+json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in {"host", "content-length"}
                }
                upstream = httpx.request(
                    self.command,
                    proxy.upstream + self.path,
                    headers=headers,
                    content=body,
                    timeout=30,
                )
                if self.path.endswith("/heartbeat"):
                    proxy.heartbeats.append((elapsed, upstream.status_code))
                    if upstream.status_code == 429:
                        retry_after = float(upstream.headers.get("retry-after", "0"))
                        proxy.upstream_refusals.append((elapsed, retry_after))
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in {
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "content-encoding",
                    }:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                self.wfile.write(upstream.content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
