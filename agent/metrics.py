"""Host resource usage for heartbeats, sampled with psutil."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from shared.agents import Resources

__all__ = ["prime_cpu_sampling", "sample_resources"]


def prime_cpu_sampling() -> None:
    """Start the CPU measurement window (the first ``cpu_percent`` call always returns 0)."""
    psutil.cpu_percent(interval=None)


def sample_resources(disk_path: Path) -> Resources:
    """CPU, load, memory and disk usage now.

    Args:
        disk_path: A path on the filesystem whose usage to report (the state directory).
    """
    memory = psutil.virtual_memory()
    try:
        disk = psutil.disk_usage(str(disk_path if disk_path.exists() else Path("/")))
        disk_values = (disk.total, disk.used, disk.percent)
    except OSError:
        disk_values = (0, 0, 0.0)
    load_1m, load_5m, load_15m = os.getloadavg()
    return Resources(
        cpu_percent=psutil.cpu_percent(interval=None),
        cpu_count=psutil.cpu_count() or 0,
        load_1m=load_1m,
        load_5m=load_5m,
        load_15m=load_15m,
        memory_total_bytes=memory.total,
        memory_used_bytes=memory.used,
        memory_percent=memory.percent,
        disk_total_bytes=disk_values[0],
        disk_used_bytes=disk_values[1],
        disk_percent=disk_values[2],
        boot_time_unix=int(psutil.boot_time()),
    )
