"""(c) Agent footprint: RSS and CPU of an idle ``byteor-agent run`` next to bare Python.

A real control plane and a real agent process (enrolled with a token, heartbeating every 10 s;
quick: 2 s, the control plane asking for the same interval). After its first accepted heartbeat
the agent idles for 60 s (quick: 8 s) while its RSS is sampled every 0.5 s; CPU is the
``cpu_times`` delta over that window divided by the wall time.

Baseline, in the same run: a bare ``python -c`` that imports the agent's own third-party
dependencies (the same modules the agent imports, with ``httpx._main`` suppressed as
``agent/__init__.py`` does; a plain ``import httpx`` would add click, rich and pygments) and
sleeps. That is every third-party package the running daemon loads: httpx's transport too
(httpcore, h11, anyio's asyncio backend), which httpx imports only when a client is built, so a
bare ``import httpx`` leaves out the HTTP stack the agent runs on. pydantic and pydantic-settings
are not among them: the daemon reads its settings in a short-lived helper process (see
``agent.config``); the probe reports if they came along, and a second baseline with them shows
the agent against all it installs.

A probe ``python -c`` imports the same dependencies one by one, then ``agent.daemon``,
``agent.cli`` and ``agent.activation``, then builds the agent's HTTP client, recording the RSS after
each step; it reports which server-side modules (litestar, sqlalchemy, ...) came along and which
packages the agent loads beyond the baseline. The control plane is stopped with a short grace
(uvicorn would otherwise wait up to 20 s for the agent's abandoned long-poll).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import psutil

from agent.status import read_status
from benchmarks.harness import bootstrap, clean_env, console_script, control_plane

if TYPE_CHECKING:
    from benchmarks.harness import ControlPlane

MIB = 1024 * 1024
TARGET_RATIO = 1.15
TARGET_RSS_MIB = 50.0
TARGET_CPU_PERCENT = 0.5
SAMPLE_SECONDS = 0.5
HEAVY = (
    "controlplane",
    "litestar",
    "sqlalchemy",
    "alembic",
    "uvicorn",
    "click",
    "rich",
    "pygments",
)

#: The agent's third-party imports, as the agent itself makes them.
LEAN_IMPORTS = """\
import sys
sys.modules.setdefault("httpx._main", None)
import httpx, msgspec, psutil, tenacity, tenacity.wait
import httpcore, h11, anyio._backends._asyncio
import apscheduler.schedulers.asyncio
import cryptography.exceptions
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives import serialization
"""

#: Every third-party module the agent installs and uses, the settings helper's included.
ALL_IMPORTS = LEAN_IMPORTS + "import pydantic, pydantic_settings\n"

_SLEEPER = "{imports}\nimport time\nprint('ready', flush=True)\ntime.sleep({seconds})\n"

_MODULES_PROBE = """\
import json, sys, psutil
def rss():
    return psutil.Process().memory_info().rss
steps = [("interpreter + psutil", rss())]
sys.modules.setdefault("httpx._main", None)
import msgspec; steps.append(("msgspec", rss()))
import httpx, httpcore, h11, anyio._backends._asyncio; steps.append(("httpx + transport", rss()))
import tenacity, tenacity.wait; steps.append(("tenacity", rss()))
import apscheduler.schedulers.asyncio; steps.append(("apscheduler", rss()))
import cryptography.exceptions
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives import serialization
steps.append(("cryptography (ed25519)", rss()))
deps = {{m.split(".")[0] for m in sys.modules}}
import agent.daemon, agent.cli, agent.activation
steps.append(("agent + shared modules", rss()))
tops = {{m.split(".")[0] for m in sys.modules}}
from agent.client import ControlPlaneClient
from agent.config import AgentConfig
client = ControlPlaneClient(AgentConfig(api_base_url="http://127.0.0.1:9"))
steps.append(("AgentConfig + ControlPlaneClient (httpx client, SSL context)", rss()))
print(json.dumps({{
    "heavy_loaded": sorted(tops & set({heavy!r})),
    "pydantic_loaded": sorted(tops & {{"pydantic", "pydantic_core", "pydantic_settings"}}),
    "modules": len(sys.modules),
    "packages_beyond_baseline": sorted(tops - deps),
    "steps": steps,
}}))
"""


def _mib(value: float) -> float:
    return round(value / MIB, 2)


def _start_sleeper(imports: str, seconds: float) -> subprocess.Popen[str]:
    code = _SLEEPER.format(imports=imports, seconds=seconds)
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=clean_env(),
    )


def _sleeper_rss(process: subprocess.Popen[str]) -> int:
    """RSS of a sleeper once its imports are done (largest of a few samples)."""
    assert process.stdout is not None
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError("baseline process did not start")
    ps = psutil.Process(process.pid)
    samples = []
    for _ in range(3):
        samples.append(ps.memory_info().rss)
        time.sleep(0.05)
    return max(samples)


def _stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _start_probe() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _MODULES_PROBE.format(heavy=HEAVY)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        cwd=Path(__file__).resolve().parent.parent,
    )


def _probe_result(process: subprocess.Popen[str]) -> dict[str, Any]:
    stdout, stderr = process.communicate(timeout=60)
    if process.returncode != 0:
        raise RuntimeError(f"module probe failed: {stderr}")
    probe: dict[str, Any] = json.loads(stdout)
    return probe


def stop_server(cp: ControlPlane, grace: float = 1.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` s: uvicorn would wait up to 20 s for a long-poll."""
    if cp.process.poll() is None:
        cp.process.send_signal(signal.SIGTERM)
        try:
            cp.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            cp.process.kill()
            cp.process.wait()


def _mapped_extensions(ps: psutil.Process) -> list[str]:
    """Top-level site-packages whose shared objects the running agent has mapped."""
    found: set[str] = set()
    with contextlib.suppress(psutil.Error):
        for region in ps.memory_maps(grouped=True):
            path = region.path
            if "site-packages/" in path and path.endswith(".so"):
                found.add(path.split("site-packages/", 1)[1].split("/", 1)[0])
    return sorted(found)


def _measure(quick: bool, workdir: Path) -> dict[str, Any]:
    idle = 8.0 if quick else 60.0
    interval = 2.0 if quick else 10.0
    server_env = {
        "BYTEOR_CLOUD_AGENT_HEARTBEAT_INTERVAL_SECONDS": f"{interval:g}",
        "BYTEOR_CLOUD_HEARTBEAT_FLUSH_SECONDS": "0.5",
        "BYTEOR_CLOUD_DRAIN_SECONDS": "0",
    }
    with control_plane(workdir / "cp", extra=server_env) as cp:
        tenant = bootstrap(cp)
        token = tenant.api("POST", f"{tenant.env_path}/enrollment-tokens", json={"max_uses": 1})
        state_dir = workdir / "agent-state"
        env = clean_env(
            BYTEOR_API_BASE_URL=cp.url,
            BYTEOR_ENROLLMENT_TOKEN=token["token"],
            BYTEOR_ORG_ID=tenant.org_id,
            BYTEOR_PROJECT_ID=tenant.project_id,
            BYTEOR_ENVIRONMENT_ID=tenant.env_id,
            BYTEOR_AGENT_NAME="footprint",
            BYTEOR_STATE_DIR=str(state_dir),
            BYTEOR_SPEC=str(workdir / "etc" / "spec.kv"),
            BYTEOR_HEARTBEAT_INTERVAL_SECONDS=f"{interval:g}",
        )
        log_path = workdir / "agent.log"
        processes: list[subprocess.Popen[Any]] = []
        log: IO[bytes]
        with log_path.open("ab") as log:
            agent = subprocess.Popen(
                [console_script("byteor-agent"), "run"], env=env, stdout=log, stderr=log
            )
        processes.append(agent)
        try:
            ps = psutil.Process(agent.pid)
            started = time.monotonic()
            startup_rss: list[int] = []
            while True:
                if agent.poll() is not None:
                    raise RuntimeError(f"agent exited {agent.returncode}:\n{log_path.read_text()}")
                with contextlib.suppress(psutil.Error):
                    startup_rss.append(ps.memory_info().rss)
                status = read_status(state_dir)
                if status is not None and status.last_heartbeat_ok:
                    break
                if time.monotonic() - started > 60:
                    raise RuntimeError(f"agent not online in 60 s:\n{log_path.read_text()}")
                time.sleep(0.1)
            startup_seconds = time.monotonic() - started
            # Baseline and module probe run while the agent idles: their CPU is their own.
            baseline = _start_sleeper(LEAN_IMPORTS, idle + 30)
            processes.append(baseline)
            all_deps = _start_sleeper(ALL_IMPORTS, idle + 30)
            processes.append(all_deps)
            probe_process = _start_probe()
            processes.append(probe_process)

            cpu_before = ps.cpu_times()
            wall_before = time.monotonic()
            last_beat = status.last_heartbeat_at
            beats = 0
            samples: list[int] = []
            deadline = wall_before + idle
            while (now := time.monotonic()) < deadline:
                samples.append(ps.memory_info().rss)
                current = read_status(state_dir)
                if current is not None and current.last_heartbeat_at != last_beat:
                    beats += 1
                    last_beat = current.last_heartbeat_at
                time.sleep(max(0.0, min(SAMPLE_SECONDS, deadline - now)))
            cpu_after = ps.cpu_times()
            wall = time.monotonic() - wall_before
            samples.append(ps.memory_info().rss)
            full = ps.memory_full_info()
            threads = ps.num_threads()
            extensions = _mapped_extensions(ps)
            baseline_rss = _sleeper_rss(baseline)
            all_deps_rss = _sleeper_rss(all_deps)
            probe = _probe_result(probe_process)
        finally:
            for process in processes:
                _stop(process)
            stop_server(cp)
        if agent.returncode not in (0, -signal.SIGTERM):
            raise RuntimeError(f"agent exited {agent.returncode}:\n{log_path.read_text()}")

    cpu_seconds = (cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system)
    cpu_percent = 100.0 * cpu_seconds / wall
    steady = statistics.median(samples)
    peak = max(samples)
    ratio = steady / baseline_rss
    steps: list[tuple[str, int]] = [(str(name), int(rss)) for name, rss in probe["steps"]]
    added = {name: _mib(rss - prev) for (_, prev), (name, rss) in itertools.pairwise(steps)}
    return {
        "idle_seconds": round(wall, 2),
        "heartbeat_interval_seconds": interval,
        "heartbeats_in_window": beats,
        "startup_seconds": round(startup_seconds, 2),
        "agent_rss_startup_peak_mib": _mib(max(startup_rss, default=0)),
        "agent_rss_steady_mib": _mib(steady),
        "agent_rss_peak_mib": _mib(peak),
        "agent_uss_mib": _mib(full.uss),
        "agent_threads": threads,
        "agent_cpu_percent": round(cpu_percent, 3),
        "agent_cpu_seconds": round(cpu_seconds, 3),
        "baseline_rss_mib": _mib(baseline_rss),
        "rss_ratio": round(ratio, 3),
        "rss_over_baseline_mib": _mib(steady - baseline_rss),
        # Bare Python importing all of them, pydantic too (what a daemon reading its own
        # settings would hold).
        "all_dependencies_rss_mib": _mib(all_deps_rss),
        "rss_ratio_all_dependencies": round(steady / all_deps_rss, 3),
        "agent_imports": {
            "heavy_loaded": probe["heavy_loaded"],
            "pydantic_loaded": probe["pydantic_loaded"],
            "modules": probe["modules"],
            "packages_beyond_baseline": probe["packages_beyond_baseline"],
            "interpreter_mib": _mib(steps[0][1]),
            "added_mib": added,
            "after_imports_and_client_mib": _mib(steps[-1][1]),
            "runtime_beyond_that_mib": _mib(steady - steps[-1][1]),
        },
        "agent_mapped_extensions": extensions,
        # Read by the settings helper only: the running daemon must not have it mapped.
        "daemon_maps_pydantic_core": "pydantic_core" in extensions,
        "target_ratio": TARGET_RATIO,
        "target_rss_mib": TARGET_RSS_MIB,
        "target_cpu_percent": TARGET_CPU_PERCENT,
        "ok": (
            ratio <= TARGET_RATIO
            and steady / MIB <= TARGET_RSS_MIB
            and cpu_percent <= TARGET_CPU_PERCENT
            and not probe["heavy_loaded"]
            and "pydantic_core" not in extensions
        ),
    }


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline rows: the idle agent against bare Python importing its dependencies."""
    return [
        {
            "measure": f"agent RSS idle {result['idle_seconds']:.0f} s (MiB)",
            "value": result["agent_rss_steady_mib"],
            "baseline": f"{result['baseline_rss_mib']} (bare imports)",
            "ratio": result["rss_ratio"],
            "target": f"<= {result['target_ratio']}x and <= {result['target_rss_mib']} MiB",
            "ok": result["rss_ratio"] <= result["target_ratio"]
            and result["agent_rss_steady_mib"] <= result["target_rss_mib"],
        },
        {
            "measure": "agent RSS idle, against all its dependencies (MiB)",
            "value": result["agent_rss_steady_mib"],
            "baseline": f"{result['all_dependencies_rss_mib']} (pydantic too)",
            "ratio": result["rss_ratio_all_dependencies"],
            "target": None,
            "ok": None,
        },
        {
            "measure": "agent CPU idle (%)",
            "value": result["agent_cpu_percent"],
            "baseline": None,
            "ratio": None,
            "target": f"<= {result['target_cpu_percent']}%",
            "ok": result["agent_cpu_percent"] <= result["target_cpu_percent"],
        },
        {
            "measure": "server packages loaded by the agent",
            "value": ", ".join(result["agent_imports"]["heavy_loaded"]) or "none",
            "target": "none",
            "ok": not result["agent_imports"]["heavy_loaded"],
        },
    ]


def run(quick: bool) -> dict[str, Any]:
    keep = os.environ.get("BENCH_KEEP_DIR")
    if keep:
        return _measure(quick, Path(keep))
    with tempfile.TemporaryDirectory(prefix="byteor-bench-fp-") as tmp:
        return _measure(quick, Path(tmp))


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=2))
