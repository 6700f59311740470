"""``serve --workers N`` on PostgreSQL: N processes share one port, and SIGTERM stops them all."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import anyio.to_thread
import httpx
import psutil
import pytest

from tests.backends import throwaway_database
from tests.e2e.conftest import GENEROUS_RATE_LIMITS, clean_env, console_script, free_port

pytestmark = [pytest.mark.anyio, pytest.mark.postgres]


async def test_workers_share_the_port_and_stop_together(tmp_path: Path) -> None:
    async with throwaway_database("postgresql", tmp_path) as url:
        await anyio.to_thread.run_sync(serve_with_two_workers, url, tmp_path, False)


async def test_workers_on_a_fresh_database_prepare_it_once(tmp_path: Path) -> None:
    """Auto-migration and the key file happen once, in the parent, not raced by the workers."""
    async with throwaway_database("postgresql", tmp_path) as url:
        await anyio.to_thread.run_sync(serve_with_two_workers, url, tmp_path, True)
    assert (tmp_path / "data" / "kek.key").stat().st_mode & 0o777 == 0o600


def serve_with_two_workers(url: str, tmp_path: Path, auto_migrate: bool) -> None:
    env = clean_env(
        BYTEOR_CLOUD_DATABASE_URL=url,
        BYTEOR_CLOUD_DATA_DIR=str(tmp_path / "data"),
        BYTEOR_CLOUD_AUTO_MIGRATE=str(auto_migrate).lower(),
        **GENEROUS_RATE_LIMITS,
    )
    if not auto_migrate:
        migrated = subprocess.run(
            [console_script("byteor-controlplane"), "migrate"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                console_script("byteor-controlplane"),
                "serve",
                "--port",
                str(port),
                "--workers",
                "2",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        workers = psutil.Process(process.pid).children(recursive=True)
        assert len([w for w in workers if "python" in w.name().lower()]) >= 2, workers
        booted = subprocess.run(
            [console_script("byteor-controlplane"), "bootstrap", "--email", "w@example.com"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        headers = {"Authorization": f"Bearer {booted.stdout.strip()}"}
        # Fresh connections land on either worker; every one of them serves the API.
        for _ in range(20):
            with httpx.Client(base_url=base, headers=headers) as client:
                assert client.get("/api/v1/orgs").status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    assert code == 0, log.read_text()
    text = log.read_text()
    assert "Traceback" not in text
    # Every process logs as configured (JSON lines), the workers as well as the parent.
    records = [json.loads(line) for line in text.splitlines() if line.strip()]
    # The key-file warning, as JSON, from the parent and from each of the two workers.
    assert sum("key file" in r["msg"] for r in records) >= 3, text
