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


SAMPLE_PLAN: dict[str, Any] = {
    "name": "orders",
    "target": "SingleRing",
    "stages": [
        {"id": "decode"},
        {"id": "enrich", "depends_on": [0]},
        {"id": "publish", "depends_on": [1]},
    ],
    "constraints": {"shards": 1, "ordering": "strict"},
    "single_ring": {"producer": "single", "scheduling": "dedicated"},
}


def _follow(
    api: _Api, path: str, until: set[str], say: Callable[[str], None], skip: int = 0
) -> dict[str, Any]:
    """Print each status a deployment passes through (after the first ``skip`` events)."""
    seen: list[str] = [""] * skip

    def settled() -> dict[str, Any] | None:
        detail: dict[str, Any] = api.call("GET", path)
        for event in detail["events"][len(seen) :]:
            seen.append(event["to_status"])
            reason = f" ({event['reason']})" if event["reason"] else ""
            say(f"      -> {event['to_status']}{reason}")
        return detail if detail["status"] in until else None

    result: dict[str, Any] = _wait(
        settled, 120, f"the deployment to become {'/'.join(sorted(until))}"
    )
    return result


def _deploy_with_approval(
    api: _Api,
    org_id: str,
    env_path: str,
    agent_id: str,
    say: Callable[[str], None],
    root: Path,
) -> None:
    spec_path = root / "agent" / "spec.kv"
    api.call("PUT", env_path, json={"approvals_required": 1})
    approver = api.call(
        "POST",
        f"/api/v1/orgs/{org_id}/service-accounts",
        json={"name": "release-approver", "role": "approver"},
    )
    approver_api = _Api(str(api.client.base_url), approver["token"])
    draft = api.call("POST", f"{env_path}/drafts", json={"name": "orders", "plan": SAMPLE_PLAN})
    deployed: list[str] = []
    for number, plan_name in ((1, "orders"), (2, "orders-v2")):
        api.call(
            "PUT",
            f"{env_path}/drafts/{draft['id']}",
            json={"plan": SAMPLE_PLAN | {"name": plan_name}},
        )
        version = api.call("POST", f"{env_path}/drafts/{draft['id']}/version")
        deployment = api.call(
            "POST",
            f"{env_path}/deployments",
            json={"pipeline_version_id": version["id"], "description": f"release {number}"},
        )
        path = f"{env_path}/deployments/{deployment['id']}"
        say(
            f"[7/7] deployment {number} of pipeline {plan_name!r} v{version['number']}: {deployment['id']}"
        )
        say("      needs 1 approval; the requester may not approve their own deployment")
        approver_api.call(
            "POST",
            f"{env_path}/approvals",
            json={"deployment_id": deployment["id"], "decision": "approve", "comment": "demo"},
        )
        say("      approved by service account release-approver")
        final = _follow(api, path, {"active", "failed"}, say)
        deployed.append(deployment["id"])
        env = api.call("GET", env_path)
        say(
            f"      the environment's current deployment is {env['current_deployment_id']}; "
            f"every agent converges to {str(env['desired_bundle_digest'])[:19]}…"
        )
        spec = spec_path.read_text() if spec_path.exists() else ""
        say(
            f"      agent {agent_id} runs {spec.splitlines()[1] if spec else 'nothing'} ({spec_path})"
        )
    say(f"      rolling back deployment 2 ({deployed[-1]})")
    api.call(
        "POST", f"{env_path}/deployments/{deployed[-1]}/rollback", json={"reason": "demo rollback"}
    )
    _follow(
        api,
        f"{env_path}/deployments/{deployed[-1]}",
        {"rolled_back"},
        say,
        skip=len(final["events"]),
    )
    spec = spec_path.read_text() if spec_path.exists() else ""
    say(f"      agent {agent_id} runs {spec.splitlines()[1] if spec else 'nothing'} again")
    env = api.call("GET", env_path)
    say(
        f"      deployment 1 ({env['current_deployment_id']}) is current again: "
        "hosts enrolled from now on get its bundle"
    )


def _incident_bundle(spec_path: Path, target: Path) -> None:
    """A small incident bundle v1 captured against the spec the agent runs."""
    import io
    import json
    import tarfile

    journal = "\n".join(
        json.dumps({"seq": i, "lane": "in", "key": f"account-{i % 3}", "payload": f"order {i}"})
        for i in range(8)
    )
    files = {
        "spec.kv": spec_path.read_bytes(),
        "spec_validation.json": b'{"ok": true, "diagnostics": []}',
        "runtime.json": b'{"uptime_s": 42}',
        "policy_audit.json": b'{"decisions": []}',
        "environment.json": b'{"hostname": "demo"}',
        "journal.jsonl": journal.encode(),
    }
    with tarfile.open(target, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"incident/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _upload_and_replay(
    api: _Api, env_path: str, agent_env: dict[str, str], say: Callable[[str], None], root: Path
) -> None:
    bundle = root / "incident.tar.gz"
    _incident_bundle(root / "agent" / "spec.kv", bundle)
    subprocess.run(  # noqa: S603 - our own console script
        [_script("byteor-agent"), "upload", str(bundle), "--kind", "incident"],
        env=agent_env,
        check=True,
        capture_output=True,
        timeout=60,
    )
    say("[+] the agent spooled an incident bundle; its upload job sends it (signed) ...")

    def valid() -> dict[str, Any] | None:
        items = api.call("GET", f"{env_path}/artifacts", params={"kind": "incident"})["items"]
        return next((a for a in items if a["status"] != "received"), None)

    artifact: dict[str, Any] = _wait(valid, 60, "the incident to be uploaded and ingested")
    say(
        f"    artifact {artifact['id']} is {artifact['status']}, "
        f"matched to pipeline version {artifact['pipeline_version_id']}"
    )
    replay = api.call(
        "POST", f"{env_path}/artifacts/{artifact['id']}/replay", json={"mode": "dry_run"}
    )
    path = f"{env_path}/artifacts/{artifact['id']}/replays/{replay['id']}"
    done: dict[str, Any] = _wait(
        lambda: (r := api.call("GET", path))["status"] in ("completed", "failed") and r,
        60,
        "the replay",
    )
    audit = done["audit"] or {}
    summary = audit.get("input", {})
    say(
        f"    replay {done['id']} {done['status']}: {summary.get('scanned_records')} records, "
        f"{len(audit.get('actions', []))} actions, audit {done['audit_sha256']}"
    )


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
    say(f"[1/7] working directory {root}")
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
            say(f"[2/7] control plane ready at {url} (SQLite in {root / 'controlplane'})")
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
                f"[3/7] bootstrapped owner demo@example.com; created {org['id']} > "
                f"{project['id']} > {environment['id']}"
            )
            enrollment = api.call("POST", f"{env_path}/enrollment-tokens", json={"max_uses": 1})
            say(f"[4/7] enrollment token {enrollment['id']} (single use) created")
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
                say("[5/7] started byteor-agent run (enrolls once, then heartbeats)")

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
                    f"[6/7] agent {record['name']} ({record['id']}) is {record['status']}: "
                    f"last heartbeat {record['last_heartbeat_at']}, "
                    f"cpu {resources.get('cpu_percent', 0):.1f}%, "
                    f"memory {resources.get('memory_percent', 0):.1f}%"
                )
                say("")
                _deploy_with_approval(api, org["id"], env_path, record["id"], say, root)
                say("")
                _upload_and_replay(api, env_path, agent_env, say, root)
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
