"""A small HTTP/1.1 keep-alive load generator on asyncio streams.

It costs far less per request than a full client library, so on a 2-core machine most CPU goes to
the server under test. Each connection sends one request at a time and reads the whole response
(``Content-Length`` bodies; the control plane never answers the benchmarked routes chunked).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True, slots=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: dict[int, int]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def request_bytes(
    method: str, path: str, *, host: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def run_load(
    port: int,
    make_request: Callable[[int], bytes],
    *,
    connections: int,
    duration: float,
    warmup: float = 1.0,
) -> LoadResult:
    """Keep ``connections`` busy for ``warmup + duration`` seconds; measure the last ``duration``.

    ``make_request(i)`` gives the bytes of the i-th request on a connection (a fresh body per
    request, for routes that reject replays of an old sequence number).
    """
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    start = time.perf_counter()
    measure_from = start + warmup
    stop_at = measure_from + duration

    async def worker(index: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = 0
        try:
            while True:
                sent = time.perf_counter()
                if sent >= stop_at:
                    return
                writer.write(make_request(index * 1_000_000 + i))
                i += 1
                try:
                    status = await _read_response(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    continue
                done = time.perf_counter()
                if sent >= measure_from:
                    latencies.append(done - sent)
                    statuses[status] = statuses.get(status, 0) + 1
                    if status >= 400:
                        errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker(i) for i in range(connections)))
    latencies.sort()
    if not latencies:
        return LoadResult(0, errors, duration, 0.0, 0.0, statuses)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return LoadResult(
        requests=len(latencies),
        errors=errors,
        seconds=duration,
        p50_ms=statistics.median(latencies) * 1000,
        p99_ms=p99 * 1000,
        statuses=statuses,
    )
