"""(f) Fleet convergence: N simulated agents converge on one deployment over real HTTP.

One real control plane (``byteor-controlplane serve`` on SQLite or PostgreSQL) and N simulated
agents in this one asyncio process. Every agent does what ``byteor-agent`` does on the wire:

* enrolls with one multi-use enrollment token and pins the key set of its ``EnrollResponse``;
* heartbeats (``POST /api/v1/agents/{id}/heartbeat``, a ``shared.agents.Heartbeat`` with an
  increasing ``sequence`` and the digest it runs) at the interval the server answers with;
* long-polls ``GET /api/v1/agents/{id}/deployment?wait=25`` with ``If-None-Match`` on its own
  keep-alive connection, pausing ~1 s between rounds like the agent;
* on a new manifest: verifies it with the real agent's checks
  (``agent.activation._verify.check_manifest``, on its pinned key set; refreshing the key set through
  ``GET …/signing-key`` + ``verify_keyset_update`` on an unknown kid), reports ``activating``,
  downloads ``GET …/bundles/{digest}``, checks its size and SHA-256 against the signed manifest,
  and reports ``active`` with the bundle digest and spec hash (as ``ActivationOutcome`` does);
  then heartbeats with the new digest. Unpacking and spec re-validation are host-side work the
  server never sees, so they are skipped.

One measurement: start the server, bootstrap a tenant (its environment needs no approval),
enroll N agents (timed, excluded from convergence), start them a few at a time (the next one
starts when one has had its first heartbeat and long-poll answered), wait (bounded) until all
are online and long-polling, promote a draft to a version, then create a deployment. The clock
starts when the deployment is requested; it stops when the last agent's ``active`` report is
acknowledged. Meanwhile the deployment is polled until the server calls it ``active``. Reported:
time to all active, median and slowest agent, heartbeat latency on the wire (p50/p99) during
convergence, the same for each rollout step (reports, bundle download), server CPU seconds and peak RSS (sampled every 0.5 s) over the convergence window,
responses by route and status, and a summary of the server log. A measurement is bounded
(20 s of convergence quick, 300 s full); one that does not converge says how many got there.

The target (issue): 10,000 agents converge in at most 60 s on a 2-core machine with the server's
RSS at most 600 MiB. Every row carries ``ok`` against those bounds.

Traffic goes to 127.0.0.1 only, on raw asyncio streams (one connection per agent's long-poll, a
shared pool for everything else) so the simulator costs little next to the server. The pool is
opened in full before the deployment: real hosts keep their own connections alive between
heartbeats, and a pool that connected only when a rollout's burst needed it measured thousands
of connects waiting in the listen backlog (SYN-ACK retries of up to a minute) instead of the
server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import resource
import signal
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote

import httpx
import msgspec

from agent.activation import ActivationRefused
from agent.activation._verify import check_manifest
from benchmarks.harness import PLAN as BENCH_PLAN
from benchmarks.harness import bootstrap, control_plane, postgres_database, postgres_reachable
from benchmarks.load import request_bytes
from shared.agents import EnrollResponse, Heartbeat, HeartbeatResponse
from shared.deployments import AgentDeployment, DeploymentReport, ManifestPayload
from shared.signing import (
    Envelope,
    UnknownKeyError,
    VerificationError,
    decode_keyset,
    verify_keyset_update,
)

if TYPE_CHECKING:
    from benchmarks.harness import ControlPlane, Tenant
    from shared.signing import KeySet

__all__ = ["measure", "run", "summarize"]

TARGET_AGENTS: Final = 10_000
TARGET_SECONDS: Final = 60.0
TARGET_RSS_MIB: Final = 600
LONG_POLL_WAIT: Final = 25
POLL_PAUSE_SECONDS: Final = 1.0  # the agent's pause between two long-polls
#: Agents between start and online + polling (no stampede). With 8, starting 10,000 agents on
#: PostgreSQL took longer than its bound in every run, and the deployment then met a fleet still
#: starting; with 32 all 10,000 were online in 58 s (the server was idle half the time at 8).
STARTING_AT_ONCE: Final = 32
ENROLL_CONCURRENCY: Final = 16
AGENT_VERSION: Final = "bench-fleet"
PLAN: Final[dict[str, Any]] = {**BENCH_PLAN, "name": "fleet"}
_DIGEST: Final = re.compile(r"sha256:([0-9a-f]{64})")
_IDS: Final = re.compile(r"\b[a-z]{3}_[0-9A-Za-z]{10,}|sha256:[0-9a-f]{64}")
_TRANSPORT_ERRORS: Final = (OSError, EOFError, asyncio.LimitOverrunError, ValueError)
_ENROLLED = msgspec.json.Decoder(EnrollResponse)
_DEPLOYMENT = msgspec.json.Decoder(AgentDeployment)
_HEARTBEAT = msgspec.json.Decoder(HeartbeatResponse)
_ENVELOPE = msgspec.json.Decoder(Envelope)
_ENCODER = msgspec.json.Encoder()
_JSON = {"Content-Type": "application/json"}


# --- a minimal HTTP/1.1 client -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def _read_reply(reader: asyncio.StreamReader) -> Reply:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0][9:12])
    headers: dict[str, str] = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = bytearray()
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            chunks += await reader.readexactly(size)
            await reader.readexactly(2)
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass  # trailers
        return Reply(status, headers, bytes(chunks))
    length = int(headers.get("content-length", "0"))
    return Reply(status, headers, await reader.readexactly(length) if length else b"")


class Connection:
    """One keep-alive connection to 127.0.0.1, opened on first use and after a failure."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.host = f"127.0.0.1:{port}"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        seconds: float = 60.0,
    ) -> Reply:
        data = request_bytes(method, path, host=self.host, headers=headers, body=body)
        for attempt in range(2):
            reused = self._writer is not None
            try:
                async with asyncio.timeout(seconds):
                    if self._reader is None or self._writer is None:
                        self._reader, self._writer = await asyncio.open_connection(
                            "127.0.0.1", self.port
                        )
                    self._writer.write(data)
                    await self._writer.drain()
                    reply = await _read_reply(self._reader)
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()
                if reused and attempt == 0:
                    continue  # the server closed an idle keep-alive connection: once more
                raise
            except BaseException:
                self.close()
                raise
            if reply.headers.get("connection", "").lower() == "close":
                self.close()
            return reply
        raise AssertionError("unreachable")

    async def open(self) -> None:
        """Connect now (else the first request does)."""
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


class Pool:
    """At most ``size`` connections shared by all agents for their short requests."""

    def __init__(self, port: int, size: int) -> None:
        self._port = port
        self._gate = asyncio.Semaphore(size)
        self._idle: list[Connection] = []
        self._all: list[Connection] = []

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[Reply, float]:
        """The reply and the seconds it took on the wire (waiting for a connection excluded)."""
        async with self._gate:
            if self._idle:
                connection = self._idle.pop()
            else:
                connection = Connection(self._port)
                self._all.append(connection)
            try:
                sent = time.perf_counter()
                reply = await connection.request(method, path, **kwargs)
                return reply, time.perf_counter() - sent
            finally:
                self._idle.append(connection)

    async def warm(self, size: int, at_once: int = 64) -> int:
        """Open connections until the pool holds ``size``; returns how many it holds.

        Real hosts each keep their own connection alive between heartbeats; a pool that opened
        its connections only when a rollout's burst needs them would measure thousands of
        connects queued in the listen backlog instead of the server.
        """
        gate = asyncio.Semaphore(at_once)

        async def one() -> None:
            connection = Connection(self._port)
            async with gate:
                with contextlib.suppress(*_TRANSPORT_ERRORS):
                    await connection.open()
                    self._all.append(connection)
                    self._idle.append(connection)

        await asyncio.gather(*(one() for _ in range(size - len(self._all))))
        return len(self._all)

    def close(self) -> None:
        for connection in self._all:
            connection.close()


# --- the simulated agents ------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class SimAgent:
    """One simulated host: its credentials, pinned key set and what it runs."""

    index: int
    agent_id: str
    org_id: str
    environment_id: str
    keyset: KeySet
    headers: dict[str, str]
    connection: Connection
    started: float = 0.0
    heartbeat_sequence: int = 0
    last_sequence: int = 0
    etag: str | None = None
    active_deployment_id: str | None = None
    active_bundle_digest: str | None = None
    online: bool = False
    polling: bool = False
    manifest_at: float | None = None
    active_at: float | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)

    def mark(self, *, online: bool = False, polling: bool = False) -> None:
        self.online = self.online or online
        self.polling = self.polling or polling
        if self.online and self.polling:
            self.ready.set()

    def next_heartbeat(self) -> bytes:
        self.heartbeat_sequence = max(self.heartbeat_sequence + 1, time.time_ns() // 1_000_000)
        return _ENCODER.encode(
            Heartbeat(
                sequence=self.heartbeat_sequence,
                agent_version=AGENT_VERSION,
                uptime_seconds=round(time.monotonic() - self.started, 3),
                hostname=f"host-{self.index:05d}.bench",
                active_deployment_id=self.active_deployment_id,
                active_bundle_digest=self.active_bundle_digest,
                keyset_version=self.keyset.version,
            )
        )


@dataclass
class Fleet:
    """Runs every agent's heartbeat and deployment loops; counts what the server answered."""

    port: int
    pool: Pool
    agents: list[SimAgent]
    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: The same, counted from the deployment's request on (``clock`` set).
    after_deployment: Counter[tuple[str, str]] = field(default_factory=Counter)
    heartbeats: list[tuple[float, float]] = field(default_factory=list)  # (sent at, seconds)
    #: Seconds on the wire of each rollout step (reports, downloads) after the deployment.
    steps: dict[str, list[float]] = field(default_factory=dict)
    clock: float = 0.0  # convergence t0 (perf_counter); 0 before the deployment is requested
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    beating: list[asyncio.Task[None]] = field(default_factory=list)

    def record(self, route: str, outcome: int | str | BaseException) -> None:
        """Count one answer: a status code, a refusal reason or a transport error."""
        key = (
            outcome
            if isinstance(outcome, str)
            else str(outcome)
            if isinstance(outcome, int)
            else type(outcome).__name__
        )
        self.statuses[route, key] += 1
        if self.clock:
            self.after_deployment[route, key] += 1

    async def start(self) -> None:
        """Start every agent, a few at a time: the next starts when one is online and polling."""
        gate = asyncio.Semaphore(STARTING_AT_ONCE)

        async def launch(agent: SimAgent) -> None:
            async with gate:
                agent.started = time.monotonic()
                self.beating.append(asyncio.create_task(self._heartbeat_loop(agent)))
                self.tasks.append(asyncio.create_task(self._deployment_loop(agent)))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(agent.ready.wait(), timeout=30)

        await asyncio.gather(*(launch(agent) for agent in self.agents))

    async def stop(self) -> None:
        """Let heartbeats in flight finish (a body cut short is a 500 in the server log), then
        cancel the long-polls, whose requests have no body to cut."""
        self.stopping.set()
        if self.beating:
            await asyncio.wait(self.beating, timeout=10)
        for task in [*self.beating, *self.tasks]:
            task.cancel()
        await asyncio.gather(*self.beating, *self.tasks, return_exceptions=True)
        for agent in self.agents:
            agent.connection.close()
        self.pool.close()

    async def owner(
        self,
        tenant: Tenant,
        route: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        attempts: int = 4,
        within: float = 90.0,
    ) -> Any:
        """An operator call (in a thread, with httpx), retried on 5xx and transport errors."""
        for attempt in range(attempts):
            try:
                response = await asyncio.to_thread(
                    httpx.request,
                    method,
                    tenant.cp.url + path,
                    headers=tenant.headers,
                    json=body,
                    timeout=within,
                )
            except httpx.TransportError as exc:
                self.record(route, exc)
            else:
                self.record(route, response.status_code)
                if response.status_code < 300:
                    return response.json() if response.content else None
                if response.status_code < 500:
                    break
            if attempt + 1 < attempts:
                await asyncio.sleep(2.0 * (attempt + 1))
        raise RuntimeError(f"{method} {path} failed; see statuses[{route!r}]")

    def timed(self, step: str, seconds: float) -> None:
        if self.clock:
            self.steps.setdefault(step, []).append(seconds)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    async def _heartbeat_loop(self, agent: SimAgent) -> None:
        path = f"/api/v1/agents/{agent.agent_id}/heartbeat"
        headers = agent.headers | _JSON
        while not self.stopping.is_set():
            interval = 5.0
            try:
                reply, seconds = await self.pool.request(
                    "POST", path, headers=headers, body=agent.next_heartbeat(), seconds=60
                )
            except _TRANSPORT_ERRORS as exc:
                self.record("heartbeat", exc)
            else:
                self.record("heartbeat", reply.status)
                self.heartbeats.append((time.perf_counter() - seconds, seconds))
                if reply.status == 200:
                    agent.mark(online=True)
                    interval = _HEARTBEAT.decode(reply.body).next_interval_seconds
            await self._pause(interval * random.uniform(0.9, 1.1))

    async def _deployment_loop(self, agent: SimAgent) -> None:
        path = f"/api/v1/agents/{agent.agent_id}/deployment?wait={LONG_POLL_WAIT}"
        failures = 0
        while not self.stopping.is_set():
            headers = dict(agent.headers)
            if agent.etag:
                headers["If-None-Match"] = agent.etag
            try:
                reply = await agent.connection.request(
                    "GET", path, headers=headers, seconds=LONG_POLL_WAIT + 35
                )
            except _TRANSPORT_ERRORS as exc:
                self.record("deployment poll", exc)
                reply = None
            if reply is not None:
                self.record("deployment poll", reply.status)
            if reply is None or reply.status not in (200, 304):
                failures += 1
                await self._pause(min(30.0, 2.0**failures) * random.uniform(0.5, 1.0))
                continue
            failures = 0
            agent.etag = reply.headers.get("etag", agent.etag)
            agent.mark(polling=True)
            if reply.status == 200:
                document = _DEPLOYMENT.decode(reply.body)
                if document.manifest is not None:
                    await self._apply(agent, document.manifest)
            await self._pause(POLL_PAUSE_SECONDS + random.uniform(0, 0.25))

    async def _post_report(self, agent: SimAgent, report: DeploymentReport) -> bool:
        path = f"/api/v1/agents/{agent.agent_id}/deployment"
        for attempt in range(6):
            try:
                reply, seconds = await self.pool.request(
                    "POST", path, headers=agent.headers | _JSON, body=_ENCODER.encode(report)
                )
            except _TRANSPORT_ERRORS as exc:
                self.record(f"report {report.status}", exc)
            else:
                self.record(f"report {report.status}", reply.status)
                self.timed(f"report {report.status}", seconds)
                if reply.status < 300:
                    return True
                if reply.status < 500 and reply.status != 429:
                    return False
            if report.status == "activating" or self.stopping.is_set():
                return False  # progress only: the final outcome is what must arrive
            await self._pause(min(10.0, 2.0**attempt) * random.uniform(0.5, 1.0))
        return False

    async def _apply(self, agent: SimAgent, envelope: Envelope) -> None:
        claimed = envelope.payload.get("sequence")
        if isinstance(claimed, int) and claimed <= agent.last_sequence:
            return
        try:
            payload = await self._verify(agent, envelope)
        except ActivationRefused as exc:
            self.record("manifest refused", exc.reason)
            return
        if agent.manifest_at is None and self.clock:
            agent.manifest_at = time.perf_counter()
        await self._post_report(
            agent,
            DeploymentReport(
                deployment_id=payload.deployment_id, sequence=payload.sequence, status="activating"
            ),
        )
        digest = quote(payload.bundle_digest, safe=":")
        try:
            reply, seconds = await self.pool.request(
                "GET", f"/api/v1/agents/{agent.agent_id}/bundles/{digest}", headers=agent.headers
            )
        except _TRANSPORT_ERRORS as exc:
            self.record("bundle download", exc)
            agent.etag = None  # fetch the manifest again rather than wait on it (304)
            return
        self.record("bundle download", reply.status)
        self.timed("bundle download", seconds)
        if reply.status != 200:
            agent.etag = None
            return
        agent.last_sequence = payload.sequence
        failure = _bundle_failure(reply.body, payload)
        if failure is not None:
            self.record("manifest refused", failure.partition(":")[0])
            await self._post_report(
                agent,
                DeploymentReport(
                    deployment_id=payload.deployment_id,
                    sequence=payload.sequence,
                    status="failed",
                    reason=failure,
                ),
            )
            return
        agent.active_deployment_id = payload.deployment_id
        agent.active_bundle_digest = payload.bundle_digest
        delivered = await self._post_report(
            agent,
            DeploymentReport(
                deployment_id=payload.deployment_id,
                sequence=payload.sequence,
                status="rolled_back" if payload.action == "rollback" else "active",
                bundle_digest=payload.bundle_digest,
                spec_hash=payload.spec_hash,
            ),
        )
        if delivered and self.clock:
            agent.active_at = time.perf_counter()

    async def _verify(self, agent: SimAgent, envelope: Envelope) -> ManifestPayload:
        """``agent/activation/_verify.py`` on the simulator's state; refreshes keys once."""
        try:
            return _verified(agent, envelope)
        except ActivationRefused as exc:
            if exc.reason != UnknownKeyError.reason:
                raise
        try:
            reply, _ = await self.pool.request(
                "GET", f"/api/v1/agents/{agent.agent_id}/signing-key", headers=agent.headers
            )
        except _TRANSPORT_ERRORS as exc:
            self.record("signing key", exc)
            raise ActivationRefused("unknown_kid", "could not refresh the key set") from exc
        self.record("signing key", reply.status)
        if reply.status == 200:
            with contextlib.suppress(VerificationError, msgspec.ValidationError):
                update = _ENVELOPE.decode(reply.body)
                agent.keyset = verify_keyset_update(agent.keyset, update, now=int(time.time()))
        return _verified(agent, envelope)


def _verified(agent: SimAgent, envelope: Envelope) -> ManifestPayload:
    """The real agent's manifest checks, on the simulated agent's decoded key set."""
    return check_manifest(
        envelope,
        agent.keyset,
        agent_id=agent.agent_id,
        org_id=agent.org_id,
        environment_id=agent.environment_id,
        last_sequence=agent.last_sequence,
    )


def _bundle_failure(archive: bytes, payload: ManifestPayload) -> str | None:
    if len(archive) != payload.bundle_size:
        return f"size_mismatch: {len(archive)} bytes, the manifest says {payload.bundle_size}"
    if "sha256:" + hashlib.sha256(archive).hexdigest() != payload.bundle_digest:
        return "digest_mismatch: the archive does not hash to the signed digest"
    return None


async def enroll(tenant: Tenant, count: int) -> tuple[list[SimAgent], dict[str, int]]:
    """Enroll ``count`` agents with one multi-use token, keeping each pinned key set.

    At most :data:`ENROLL_CONCURRENCY` at once; a 5xx or a transport error is retried under a
    new name (the first attempt may have enrolled after all). Returns the agents and the
    enrollment answers by status.
    """
    token = (
        await asyncio.to_thread(
            tenant.api,
            "POST",
            f"{tenant.env_path}/enrollment-tokens",
            json={"max_uses": count + count // 10 + 10},  # room for retries
        )
    )["token"]
    headers = {"Authorization": f"Bearer {token}"} | _JSON
    pool = Pool(tenant.cp.port, ENROLL_CONCURRENCY)
    statuses: Counter[str] = Counter()

    async def one(i: int) -> SimAgent:
        for attempt in range(5):
            name = f"host-{i:05d}" + (f"-r{attempt}" if attempt else "")
            body = json.dumps(
                {"name": name, "hostname": f"{name}.bench", "agent_version": AGENT_VERSION}
            ).encode()
            try:
                reply, _ = await pool.request(
                    "POST", f"{tenant.env_path}/agents", headers=headers, body=body, seconds=120
                )
            except _TRANSPORT_ERRORS as exc:
                statuses[type(exc).__name__] += 1
            else:
                statuses[str(reply.status)] += 1
                if reply.status in (200, 201):
                    enrolled = _ENROLLED.decode(reply.body)
                    return SimAgent(
                        index=i,
                        agent_id=enrolled.agent_id,
                        org_id=enrolled.org_id,
                        environment_id=enrolled.environment_id,
                        keyset=decode_keyset(enrolled.signing_keys),  # pinned, as the agent does
                        headers={"Authorization": f"Bearer {enrolled.api_key}"},
                        connection=Connection(tenant.cp.port),
                    )
                if reply.status < 500:
                    break
            await asyncio.sleep(1.0 + attempt)
        raise RuntimeError(f"enrollment {i} failed; answers so far: {dict(statuses)}")

    try:
        return list(await asyncio.gather(*(one(i) for i in range(count)))), dict(statuses)
    finally:
        pool.close()


# --- one measurement -----------------------------------------------------------------------------


def raise_open_file_limit() -> int:
    """Raise this process's (and so the server's) soft open-file limit to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] if ordered else 0.0


def _seconds(at: str, since: str) -> float:
    return (datetime.fromisoformat(at) - datetime.fromisoformat(since)).total_seconds()


def server_log_summary(log: Path, limit: int = 8) -> dict[str, Any]:
    """Lines of the server log by level, and its most frequent warning and error messages."""
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    if not log.exists():
        return {"levels": {}, "top": []}
    for line in log.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = {"level": "text", "msg": line}
        if not isinstance(entry, dict):
            continue
        level = str(entry.get("level", "?"))
        levels[level] += 1
        if level not in ("info", "debug"):
            text = f"{entry.get('msg', '')} {entry.get('path', '')}".strip()
            exc = str(entry.get("exc", "")).strip().splitlines()
            if exc:
                text += f" [{exc[-1][:160]}]"
            messages[f"{level}: {_IDS.sub('<id>', text)[:300]}"] += 1
    return {"levels": dict(levels), "top": [[m, n] for m, n in messages.most_common(limit)]}


async def _online_on_server(cp: ControlPlane, within: float) -> int:
    """``byteor_agents{status="online"}`` from ``/metrics`` (the database's view)."""
    connection = Connection(cp.port)
    try:
        reply = await connection.request("GET", "/metrics", seconds=within)
    finally:
        connection.close()
    found = re.search(rb'^byteor_agents\{status="online"\} ([0-9.e+]+)$', reply.body, re.M)
    return int(float(found.group(1))) if found else -1


async def _sample_rss(cp: ControlPlane, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], cp.rss_bytes())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=0.5)


def pool_size_for(agents: int) -> int:
    """Connections shared by the agents' short requests (each real host would have its own)."""
    return max(16, min(4096, agents // 4))


def heartbeat_seconds_for(agents: int) -> float:
    """The interval the server asks for: 1 s for small fleets, up to the 30 s default."""
    return float(min(30, max(1, agents // 200)))


async def _converge(cp: ControlPlane, n: int, budget: float, row: dict[str, Any]) -> dict[str, Any]:
    tenant = bootstrap(cp)
    pool = Pool(cp.port, pool_size_for(n))
    begun = time.perf_counter()
    agents, row["enroll_statuses"] = await enroll(tenant, n)
    row["enroll_seconds"] = round(time.perf_counter() - begun, 2)
    fleet = Fleet(cp.port, pool, agents)
    started = time.perf_counter()
    starting = asyncio.create_task(fleet.start())
    try:
        ready_by = time.monotonic() + min(budget / 2, 10 + n / 50)
        while not all(a.ready.is_set() for a in agents):
            if time.monotonic() > ready_by:
                break
            await asyncio.sleep(0.2)
        online, settle_by = -1, max(ready_by, time.monotonic() + 3)
        while time.monotonic() < settle_by:
            with contextlib.suppress(*_TRANSPORT_ERRORS):
                online = await _online_on_server(cp, max(1.0, settle_by - time.monotonic()))
            if online >= n:
                break
            await asyncio.sleep(0.5)
        row["pool_connections"] = await pool.warm(pool_size_for(n))
        row["start_seconds"] = round(time.perf_counter() - started, 2)
        row["online_before_deploy"] = {
            "simulator": sum(a.ready.is_set() for a in agents),
            "server": online,
        }
        draft = await fleet.owner(
            tenant,
            "owner draft",
            "POST",
            f"{tenant.env_path}/drafts",
            {"name": "fleet", "plan": PLAN},
        )
        version = await fleet.owner(
            tenant, "owner promote", "POST", f"{tenant.env_path}/drafts/{draft['id']}/version"
        )
        return await _deploy_and_wait(cp, tenant, fleet, version["id"], budget, row)
    finally:
        starting.cancel()
        await asyncio.gather(starting, return_exceptions=True)
        await fleet.stop()
        _finish(row, fleet.statuses, fleet.after_deployment)


async def _deploy_and_wait(
    cp: ControlPlane,
    tenant: Tenant,
    fleet: Fleet,
    version_id: str,
    budget: float,
    row: dict[str, Any],
) -> dict[str, Any]:
    n = len(fleet.agents)
    stop_sampling = asyncio.Event()
    peak = [cp.rss_bytes()]
    sampler = asyncio.create_task(_sample_rss(cp, peak, stop_sampling))
    cpu_before, own_cpu_before = cp.cpu_seconds(), time.process_time()
    fleet.clock = t0 = time.perf_counter()
    deployment = await fleet.owner(
        tenant,
        "owner deploy",
        "POST",
        f"{tenant.env_path}/deployments",
        {"pipeline_version_id": version_id, "description": f"fleet of {n}"},
    )
    if deployment["status"] == "pending_approval":
        raise RuntimeError("the benchmark environment must not require approvals")
    deadline = t0 + budget
    status_path = f"{tenant.env_path}/deployments/{deployment['id']}"
    poll_every = max(1.0, n / 1000)
    detail: dict[str, Any] = deployment
    server_active: float | None = None
    next_poll = 0.0
    while time.perf_counter() < deadline:
        now = time.perf_counter()
        if now >= next_poll and server_active is None:
            next_poll = now + poll_every
            with contextlib.suppress(RuntimeError):
                left = max(5.0, min(30.0, deadline - now))
                detail = await fleet.owner(
                    tenant, "owner status", "GET", status_path, attempts=1, within=left
                )
            if detail["status"] == "active":
                server_active = time.perf_counter() - t0
            elif detail["status"] in ("failed", "denied", "rolling_back", "rolled_back"):
                break
        everyone = all(a.active_deployment_id == deployment["id"] for a in fleet.agents)
        if everyone and all(a.active_at is not None for a in fleet.agents) and server_active:
            break
        await asyncio.sleep(0.1)
    ended = time.perf_counter()
    cpu = cp.cpu_seconds() - cpu_before
    own_cpu = time.process_time() - own_cpu_before
    stop_sampling.set()
    await sampler
    if server_active is None:  # one last look
        with contextlib.suppress(RuntimeError):
            detail = await fleet.owner(
                tenant, "owner status", "GET", status_path, attempts=1, within=30
            )
    times = sorted(a.active_at - t0 for a in fleet.agents if a.active_at is not None)
    manifests = sorted(a.manifest_at - t0 for a in fleet.agents if a.manifest_at is not None)
    beats = [s for at, s in fleet.heartbeats if t0 <= at <= ended] or [
        s for _, s in fleet.heartbeats
    ]
    converged = len(times) == n and server_active is not None
    events = detail.get("events") or []
    first = events[0]["created_at"] if events else None
    row.update(
        {
            "converged": converged,
            "agents_active": len(times),
            "seconds_to_all_active": round(times[-1], 2) if converged else None,
            "median_agent_seconds": round(statistics.median(times), 2) if times else None,
            "slowest_agent_seconds": round(times[-1], 2) if times else None,
            "median_first_manifest_seconds": (
                round(statistics.median(manifests), 2) if manifests else None
            ),
            "server_status": detail["status"],
            "server_active_seconds": round(server_active, 2) if server_active else None,
            "server_targets": len(detail.get("agent_ids") or []),
            "server_timeline": [
                [e["to_status"], round(_seconds(e["created_at"], first), 2), e.get("reason")]
                for e in events
                if first is not None
            ],
            "heartbeats": len(beats),
            "heartbeat_p50_ms": round(statistics.median(beats) * 1000, 2) if beats else None,
            "heartbeat_p99_ms": round(_percentile(beats, 0.99) * 1000, 2) if beats else None,
            "steps_ms": {
                step: {
                    "p50": round(statistics.median(seconds) * 1000, 1),
                    "p99": round(_percentile(seconds, 0.99) * 1000, 1),
                }
                for step, seconds in sorted(fleet.steps.items())
            },
            "server_cpu_seconds": round(cpu, 2),
            "server_cpu_cores": round(cpu / (ended - t0), 2) if ended > t0 else None,
            "server_peak_rss_mib": round(peak[0] / 2**20, 1),
            "simulator_cpu_seconds": round(own_cpu, 2),
        }
    )
    if not converged:
        row["did_not_converge"] = (
            f"{len(times)} of {n} agents active, server status {detail['status']!r} "
            f"after {round(ended - t0, 1)} s"
        )
    return row


def _target_ok(row: dict[str, Any]) -> bool:
    seconds = row.get("seconds_to_all_active")
    return bool(
        row.get("converged")
        and seconds is not None
        and seconds <= TARGET_SECONDS
        and row.get("server_peak_rss_mib", TARGET_RSS_MIB + 1) <= TARGET_RSS_MIB
        and not row.get("errors")
        and not row.get("server_log", {}).get("levels", {}).get("error")
    )


async def measure(
    agents: int,
    workdir: Path,
    *,
    database_url: str | None = None,
    budget: float = 300.0,
    workers: int = 1,
) -> dict[str, Any]:
    """One convergence measurement of ``agents`` simulated agents against a fresh server."""
    nofile = raise_open_file_limit()
    if agents + pool_size_for(agents) + 256 > nofile:
        raise RuntimeError(f"{agents} agents need more open files than the limit {nofile}")
    heartbeat = heartbeat_seconds_for(agents)
    row: dict[str, Any] = {
        "agents": agents,
        "backend": "postgres" if database_url else "sqlite",
        "heartbeat_interval_seconds": heartbeat,
        "timeout_seconds": budget,
        "server_workers": workers,
    }
    extra = {
        "BYTEOR_CLOUD_AGENT_HEARTBEAT_INTERVAL_SECONDS": str(heartbeat),
        "BYTEOR_CLOUD_AGENT_STALE_AFTER_SECONDS": str(max(90.0, heartbeat * 3)),
        "BYTEOR_CLOUD_HEARTBEAT_FLUSH_SECONDS": "0.5",
        "BYTEOR_CLOUD_JOB_POLL_INTERVAL_SECONDS": "0.25",
        "BYTEOR_CLOUD_DRAIN_SECONDS": "0",
        "BYTEOR_CLOUD_AUTO_MIGRATE": "true",  # default off for PostgreSQL
    }
    # Server settings to try (BYTEOR_CLOUD_DATABASE_POOL_SIZE=20 python -m benchmarks.fleet …).
    extra.update({k: v for k, v in os.environ.items() if k.startswith("BYTEOR_CLOUD_")})
    row["server_overrides"] = sorted(k for k in os.environ if k.startswith("BYTEOR_CLOUD_"))
    with control_plane(workdir, database_url=database_url, extra=extra, workers=workers) as cp:
        try:
            await _converge(cp, agents, budget, row)
        except Exception as exc:  # noqa: BLE001 - one failed measurement must not end the run
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        finally:
            _stop_promptly(cp)
            row["server_log"] = server_log_summary(cp.log)
    row["ok"] = "error" not in row and _target_ok(row)
    return row


def _stop_promptly(cp: ControlPlane, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` s: the figures are in, and uvicorn would otherwise
    wait up to its 20 s graceful timeout for long-polls whose clients are already gone."""
    if cp.process.poll() is None:
        cp.process.send_signal(signal.SIGTERM)
        try:
            cp.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            cp.process.kill()
            cp.process.wait()


def _errors(statuses: Counter[tuple[str, str]]) -> dict[str, int]:
    return {
        f"{route} {status}": count
        for (route, status), count in sorted(statuses.items())
        if not status.isdigit() or int(status) >= 400
    }


def _finish(
    row: dict[str, Any],
    statuses: Counter[tuple[str, str]],
    after_deployment: Counter[tuple[str, str]],
) -> None:
    by_route: dict[str, dict[str, int]] = {}
    for (route, status), count in sorted(statuses.items()):
        by_route.setdefault(route, {})[status] = count
    row["statuses"] = by_route
    row["errors"] = _errors(statuses)
    # Which came while the fleet started (every agent's first requests at once), which after.
    row["errors_after_deployment"] = _errors(after_deployment)


def summarize(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline rows for ``python -m benchmarks``: one per fleet size and backend."""
    target = f"<= {TARGET_SECONDS:.0f} s, RSS <= {TARGET_RSS_MIB} MiB ({TARGET_AGENTS:,} agents)"
    out: list[dict[str, Any]] = []
    for row in result["rows"]:
        name = f"{row['agents']:,} agents on {row['backend']}"
        if "skipped" in row:
            out.append({"measure": name, "value": f"skipped: {row['skipped']}", "ok": None})
            continue
        errors = sum(row.get("errors", {}).values())
        out.append(
            {
                "measure": (
                    f"{name}: s to all active (median agent {row.get('median_agent_seconds')} s, "
                    f"heartbeat p99 {row.get('heartbeat_p99_ms')} ms, "
                    f"RSS {row.get('server_peak_rss_mib')} MiB, {errors} errors)"
                ),
                "value": row.get("seconds_to_all_active")
                if row.get("converged")
                else f"did not converge ({row.get('agents_active', 0)}/{row['agents']})",
                "baseline": None,
                "ratio": None,
                "target": target,
                "ok": row["ok"],
            }
        )
    return out


def run(quick: bool) -> dict[str, Any]:
    """Quick: 50 agents on SQLite. Full: 1,000 and 10,000 on SQLite and PostgreSQL."""
    sizes = [50] if quick else [1_000, 10_000]
    timeout = 20.0 if quick else 300.0
    rows: list[dict[str, Any]] = []
    keep = os.environ.get("BENCH_KEEP_DIR")
    with tempfile.TemporaryDirectory(prefix="byteor-bench-fleet-") as tmp:
        base = Path(keep) if keep else Path(tmp)
        for n in sizes:
            rows.append(asyncio.run(measure(n, base / f"sqlite-{n}", budget=timeout)))
            if quick:
                continue
            if not postgres_reachable():
                rows.append(
                    {
                        "agents": n,
                        "backend": "postgres",
                        "skipped": "PostgreSQL is not reachable on 127.0.0.1:5432",
                        "ok": False,
                    }
                )
                continue
            with postgres_database() as url:
                rows.append(
                    asyncio.run(
                        measure(n, base / f"postgres-{n}", database_url=url, budget=timeout)
                    )
                )
    at_target = [r for r in rows if r["agents"] >= TARGET_AGENTS and "skipped" not in r]
    return {
        "rows": rows,
        "target": {
            "agents": TARGET_AGENTS,
            "seconds": TARGET_SECONDS,
            "server_rss_mib": TARGET_RSS_MIB,
            "cores": 2,
            "this_machine_cores": os.cpu_count(),
        },
        "target_met": all(r["ok"] for r in at_target) if at_target else None,
        "ok": all(r["ok"] for r in rows if "skipped" not in r),
    }


def main() -> None:
    """``python -m benchmarks.fleet [--full | N ...] [--postgres] [--budget S]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("agents", nargs="*", type=int, help="one measurement per fleet size")
    parser.add_argument("--full", action="store_true", help="run(quick=False)")
    parser.add_argument("--postgres", action="store_true", help="on a throwaway PostgreSQL")
    parser.add_argument("--budget", type=float, default=300.0, help="convergence timeout (s)")
    parser.add_argument(
        "--workers", type=int, default=1, help="serve --workers N (PostgreSQL: N processes)"
    )
    args = parser.parse_args()
    if not args.agents:
        print(json.dumps(run(quick=not args.full), indent=2))
        return
    for n in args.agents:
        with tempfile.TemporaryDirectory(prefix="byteor-bench-fleet-") as tmp:
            workdir = Path(os.environ.get("BENCH_KEEP_DIR") or tmp) / f"fleet-{n}"
            if args.postgres:
                with postgres_database() as url:
                    row = asyncio.run(
                        measure(
                            n, workdir, database_url=url, budget=args.budget, workers=args.workers
                        )
                    )
            else:
                row = asyncio.run(measure(n, workdir, budget=args.budget, workers=args.workers))
        print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
