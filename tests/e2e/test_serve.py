"""The installed ``byteor-controlplane`` commands, run as a newcomer would."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx

from controlplane.db.migrate import head_revision
from tests.e2e.conftest import Server, clean_env, console_script, start_server

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script("byteor-controlplane"), *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_bootstrap_prints_one_token_then_refuses(server: Server) -> None:
    first = run_cli("bootstrap", "--email", "owner@example.com", cwd=server.cwd)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 1
    token = lines[0]
    assert re.fullmatch(r"byteor_pat_[A-Za-z0-9_-]{43}", token)

    me = httpx.get(f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200
    assert me.json()["memberships"][0]["org_name"] == "default"
    assert me.json()["memberships"][0]["role"] == "owner"

    again = run_cli("bootstrap", "--email", "other@example.com", "--org", "x", cwd=server.cwd)
    assert again.returncode == 2
    assert again.stdout == ""
    assert "owner already exists" in again.stderr
    assert token not in (server.log.read_text() + again.stderr)


def test_bootstrap_rejects_bad_email(tmp_path: Path) -> None:
    result = run_cli("bootstrap", "--email", "nope", cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid argument" in result.stderr


def test_serve_answers_and_stops_cleanly_on_sigterm(server: Server) -> None:
    assert httpx.get(f"{server.url}/healthz").json() == {"status": "ok"}
    unauthorized = httpx.get(f"{server.url}/api/v1/orgs")
    assert unauthorized.status_code == 401
    assert unauthorized.headers["content-type"] == "application/problem+json"
    schema = httpx.get(f"{server.url}/schema/openapi.json").json()
    assert schema["openapi"].startswith("3.1")
    assert "/api/v1/orgs/{org_id}/projects/{project_id}/environments/{env_id}" in schema["paths"]
    assert server.stop() == 0
    assert (server.cwd / "byteor-data" / "byteor.db").exists()


def test_migrate_then_serve_with_bind_addr(tmp_path: Path) -> None:
    data = tmp_path / "state"
    migrated = run_cli("migrate", cwd=tmp_path, BYTEOR_CLOUD_DATA_DIR=str(data))
    assert migrated.returncode == 0, migrated.stderr
    assert f"revision {head_revision()}" in migrated.stderr
    env = clean_env(BYTEOR_CLOUD_DATA_DIR=str(data), BYTEOR_CLOUD_AUTO_MIGRATE="false")
    running = start_server(tmp_path, env)
    try:
        assert httpx.get(f"{running.url}/readyz").json()["schema_revision"] == head_revision()
    finally:
        running.stop()


def test_invalid_settings_exit_2(tmp_path: Path) -> None:
    result = run_cli("serve", cwd=tmp_path, BYTEOR_CLOUD_API_BIND_ADDR="nonsense")
    assert result.returncode == 2
    assert "BYTEOR_CLOUD" in result.stderr or "api_bind_addr" in result.stderr


def _walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- walkthrough:start -->\n```bash\n(.*?)```\n<!-- walkthrough:end -->", readme, re.S
    )
    assert match, "README.md lost its walkthrough block"
    return match.group(1)


def test_readme_walkthrough_runs_verbatim(server: Server) -> None:
    env = clean_env(
        BYTEOR_URL=server.url,
        PATH=f"{Path(console_script('byteor-controlplane')).parent}:{clean_env()['PATH']}",
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _walkthrough()],
        cwd=server.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    out = result.stdout
    assert '"status":"ready"' in out
    assert '"tuning_profile":"low-latency"' in out
    assert '"approvals_required":2' in out
    assert '"role":"deployer"' in out
    assert '"status":403' in out
    assert '"ok":true' in out
    assert "verified: sha256:" in out
    assert "\n204\n" in out
    assert out.rstrip().endswith("}")
    assert '"status":404' in out.splitlines()[-1]


def test_demo_brings_an_agent_online(tmp_path: Path) -> None:
    result = subprocess.run(
        [console_script("byteor-controlplane"), "demo", "--once"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert [line[:5] for line in lines[:6]] == [f"[{i}/7]" for i in range(1, 7)]
    assert "agent demo-agent (agt_" in lines[5]
    assert "is online: last heartbeat" in lines[5]
    out = result.stdout
    assert out.count("-> active (every target is active (1))") == 2
    assert "runs pipeline.name=orders-v2" in out
    assert "-> rolled_back" in out
    assert "runs pipeline.name=orders again" in out
    assert "is valid, matched to pipeline version ver_" in out
    assert "completed: 8 records, 24 actions, audit sha256:" in out
