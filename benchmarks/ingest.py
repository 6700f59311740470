"""(e) Artifact ingest: a 64 MiB upload through ``POST /api/v1/agents/{id}/artifacts``.

A real control plane; an agent enrolled over HTTP with an Ed25519 identity key
(``public_key``); the agent's own client (:meth:`agent.client.ControlPlaneClient.upload_artifact`,
multipart ``metadata`` then ``file``, streamed from disk) uploads a random 64 MiB ``telemetry``
artifact (quick: 8 MiB) whose metadata is signed with :func:`shared.artifacts.sign_metadata`.
64 MiB is exactly ``MAX_ARTIFACT_BYTES``, the hard limit, so no setting needs raising.

Measured: throughput (MiB/s, from the call to the receipt, so including the server's fsync and
database row) and the server's RSS growth during the upload (``rss_bytes()`` sampled every 50 ms,
growth = peak - before). Each side gets a 1 KiB warm-up upload first, so lazily imported code is
not counted as upload memory, then three more 1 KiB uploads whose median latency is the fixed
cost of one upload (auth, signature check, database row, fsync): at 8 MiB it weighs on the ratio.

Baseline, in the same run: a minimal raw ASGI app (reads and discards the body, answers 201 with
a receipt) served by uvicorn with the same defaults as the control plane, on 127.0.0.1, receiving
the same upload from the same client. Sink and control plane alternate, ``repeats`` times each.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent.client import ControlPlaneClient
from agent.settings import AgentSettings
from benchmarks.harness import bootstrap, clean_env, control_plane, free_port
from shared.artifacts import MAX_ARTIFACT_BYTES, ArtifactMetadata, sign_metadata

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

MIB = 1024 * 1024
TARGET_GROWTH_MIB = 16.0
TARGET_RATIO = 0.5
SAMPLE_SECONDS = 0.05
#: A 1 KiB upload: its latency is the fixed cost of one upload (auth, signature, row, fsync).
SMALL = 1024
SMALL_UPLOADS = 3

SINK_APP = """\
import sys, uvicorn

RECEIPT = b'{"artifact_id":"art_sink","status":"received","duplicate":false}'

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({
        "type": "http.response.start",
        "status": 201,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(RECEIPT)).encode())],
    })
    await send({"type": "http.response.body", "body": RECEIPT})

config = uvicorn.Config(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                        access_log=False, lifespan="off", server_header=False)
uvicorn.Server(config).run()
"""


@dataclass(frozen=True, slots=True)
class Upload:
    seconds: float
    growth_bytes: int
    before_bytes: int
    peak_bytes: int

    def mib_per_second(self, size: int) -> float:
        return size / MIB / self.seconds if self.seconds else 0.0


class RssSampler:
    """Samples ``rss()`` every 50 ms in a thread; ``peak`` is the largest sample."""

    def __init__(self, rss: Callable[[], int]) -> None:
        self._rss = rss
        self._stop = threading.Event()
        self.peak = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._rss())
            self._stop.wait(SAMPLE_SECONDS)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(psutil.Error):
            self.peak = max(self.peak, self._rss())


def _tree_rss(pid: int) -> int:
    process = psutil.Process(pid)
    total = 0
    for proc in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


@contextlib.contextmanager
def asgi_sink() -> Iterator[tuple[str, int]]:
    """A raw ASGI sink under uvicorn on 127.0.0.1; yields its URL and pid."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", SINK_APP, str(port)],
        env=clean_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                stderr = process.stderr.read().decode() if process.stderr else ""
                raise RuntimeError(f"sink exited {process.returncode}: {stderr}")
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("sink not listening in 30 s") from None
                time.sleep(0.05)
        yield url, process.pid
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stderr is not None:
            process.stderr.close()


def _write_payload(path: Path, size: int) -> str:
    """Random bytes (so each file has its own digest); returns the hex SHA-256."""
    import hashlib

    digest = hashlib.sha256()
    with path.open("wb") as out:
        left = size
        while left:
            chunk = os.urandom(min(4 * MIB, left))
            digest.update(chunk)
            out.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


class Uploader:
    """The agent's client, signing metadata with the agent's identity key."""

    def __init__(self, base_url: str, agent_id: str, api_key: str, key: Ed25519PrivateKey) -> None:
        settings = AgentSettings(
            api_base_url=base_url,
            http_timeout_seconds=300,
            max_retry_attempts=1,
        ).config()
        self.client = ControlPlaneClient(settings)
        self.client.set_credentials(agent_id, api_key)
        self.agent_id = agent_id
        self.key = key

    async def upload(self, path: Path, sha256: str, size: int, rss: Callable[[], int]) -> Upload:
        metadata = sign_metadata(
            ArtifactMetadata(
                agent_id=self.agent_id,
                kind="telemetry",
                sha256=sha256,
                size=size,
                captured_at=datetime.now(UTC),
                idempotency_key=secrets.token_hex(8),
                filename=path.name,
            ),
            self.key,
        )
        before = rss()
        with RssSampler(rss) as sampler:
            started = time.perf_counter()
            receipt, duplicate = await self.client.upload_artifact(metadata, path)
            seconds = time.perf_counter() - started
        if duplicate or not receipt.artifact_id:
            raise RuntimeError(f"unexpected receipt {receipt}")
        return Upload(seconds, max(0, sampler.peak - before), before, sampler.peak)


def _median_ms(uploads: list[Upload]) -> float:
    return round(statistics.median(u.seconds for u in uploads) * 1000, 2)


def _enroll_with_key(
    base_url: str, env_path: str, token: str
) -> tuple[str, str, Ed25519PrivateKey]:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    response = httpx.post(
        base_url + env_path + "/agents",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "name": "ingest",
            "public_key": base64.urlsafe_b64encode(public).decode().rstrip("="),
        },
        timeout=30,
    )
    response.raise_for_status()
    body = response.json()
    return body["agent_id"], body["api_key"], key


async def _measure(quick: bool, workdir: Path) -> dict[str, Any]:
    size = 8 * MIB if quick else 64 * MIB
    size = min(size, MAX_ARTIFACT_BYTES)
    repeats = 5 if quick else 3
    extra = {"BYTEOR_CLOUD_DRAIN_SECONDS": "0", "BYTEOR_CLOUD_JOB_POLL_INTERVAL_SECONDS": "0.5"}
    files = []
    for i in range(SMALL_UPLOADS * 2 + 2 + repeats * 2):
        path = workdir / f"payload-{i}.bin"
        files.append((path, _write_payload(path, SMALL if i < SMALL_UPLOADS * 2 + 2 else size)))
    warm_sink, warm_cp = files[:2]
    smalls = files[2 : 2 + SMALL_UPLOADS * 2]
    payloads = files[2 + SMALL_UPLOADS * 2 :]
    small_sink: list[Upload] = []
    small_cp: list[Upload] = []
    sink_runs: list[Upload] = []
    cp_runs: list[Upload] = []
    with control_plane(workdir / "cp", extra=extra) as cp, asgi_sink() as (sink_url, sink_pid):
        tenant = bootstrap(cp)
        token = tenant.api("POST", f"{tenant.env_path}/enrollment-tokens", json={"max_uses": 1})
        agent_id, api_key, key = _enroll_with_key(cp.url, tenant.env_path, token["token"])
        to_cp = Uploader(cp.url, agent_id, api_key, key)
        to_sink = Uploader(sink_url, agent_id, "sink", key)

        def sink_rss() -> int:
            return _tree_rss(sink_pid)

        try:
            await to_sink.upload(*warm_sink, SMALL, sink_rss)
            await to_cp.upload(*warm_cp, SMALL, cp.rss_bytes)
            for i in range(SMALL_UPLOADS):
                small_sink.append(await to_sink.upload(*smalls[2 * i], SMALL, sink_rss))
                small_cp.append(await to_cp.upload(*smalls[2 * i + 1], SMALL, cp.rss_bytes))
            for i in range(repeats):
                sink_path, sink_digest = payloads[2 * i]
                cp_path, cp_digest = payloads[2 * i + 1]
                sink_runs.append(await to_sink.upload(sink_path, sink_digest, size, sink_rss))
                cp_runs.append(await to_cp.upload(cp_path, cp_digest, size, cp.rss_bytes))
        finally:
            await to_cp.client.aclose()
            await to_sink.client.aclose()
        stored = tenant.api("GET", f"{tenant.env_path}/artifacts")["items"]
        staging = cp.data_dir / "blobs" / "staging"
        leftover = sorted(p.name for p in staging.iterdir()) if staging.is_dir() else []
    if len(stored) != repeats + SMALL_UPLOADS + 1 or any(
        a["size"] not in (size, SMALL) for a in stored
    ):
        raise RuntimeError(f"unexpected stored artifacts: {stored}")

    sink_mibs = statistics.median(u.mib_per_second(size) for u in sink_runs)
    cp_mibs = statistics.median(u.mib_per_second(size) for u in cp_runs)
    growth = max(u.growth_bytes for u in cp_runs)
    ratio = cp_mibs / sink_mibs if sink_mibs else 0.0
    # Seconds per upload beyond the fixed cost of a 1 KiB one: the streaming part alone.
    cp_stream = statistics.median(u.seconds for u in cp_runs) - _median_ms(small_cp) / 1000
    sink_stream = statistics.median(u.seconds for u in sink_runs) - _median_ms(small_sink) / 1000
    streaming = sink_stream / cp_stream if cp_stream > 0 else 0.0
    return {
        "artifact_mib": size / MIB,
        "hard_max_mib": MAX_ARTIFACT_BYTES / MIB,
        "repeats": repeats,
        "throughput_mib_s": round(cp_mibs, 1),
        "throughput_runs_mib_s": [round(u.mib_per_second(size), 1) for u in cp_runs],
        "baseline_sink_mib_s": round(sink_mibs, 1),
        "baseline_sink_runs_mib_s": [round(u.mib_per_second(size), 1) for u in sink_runs],
        "throughput_ratio": round(ratio, 3),
        "streaming_ratio_without_fixed_cost": round(streaming, 3),
        "small_upload_ms": _median_ms(small_cp),
        "small_upload_sink_ms": _median_ms(small_sink),
        "server_rss_before_mib": round(cp_runs[0].before_bytes / MIB, 1),
        "server_rss_growth_mib": round(growth / MIB, 2),
        "server_rss_growth_runs_mib": [round(u.growth_bytes / MIB, 2) for u in cp_runs],
        "sink_rss_growth_mib": round(max(u.growth_bytes for u in sink_runs) / MIB, 2),
        "staging_leftovers": leftover,
        "target_growth_mib": TARGET_GROWTH_MIB,
        "target_ratio": TARGET_RATIO,
        "ok": growth / MIB <= TARGET_GROWTH_MIB and ratio >= TARGET_RATIO and not leftover,
    }


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline rows: a large signed upload against a raw ASGI sink in the same run."""
    return [
        {
            "measure": f"{result['artifact_mib']:.0f} MiB artifact upload (MiB/s)",
            "value": result["throughput_mib_s"],
            "baseline": f"{result['baseline_sink_mib_s']} (ASGI sink)",
            "ratio": result["throughput_ratio"],
            "target": f">= {result['target_ratio']}x",
            "ok": result["throughput_ratio"] >= result["target_ratio"],
        },
        {
            "measure": "server RSS growth during the upload (MiB)",
            "value": result["server_rss_growth_mib"],
            "baseline": f"{result['sink_rss_growth_mib']} (ASGI sink)",
            "ratio": None,
            "target": f"<= {result['target_growth_mib']} MiB",
            "ok": result["server_rss_growth_mib"] <= result["target_growth_mib"],
        },
    ]


def run(quick: bool) -> dict[str, Any]:
    keep = os.environ.get("BENCH_KEEP_DIR")
    if keep:
        return asyncio.run(_measure(quick, Path(keep)))
    with tempfile.TemporaryDirectory(prefix="byteor-bench-ingest-") as tmp:
        return asyncio.run(_measure(quick, Path(tmp)))


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=2))
