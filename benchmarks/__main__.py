"""``python -m benchmarks [--quick] [--only NAME ...] [--json PATH]``.

Runs each benchmark against real processes on 127.0.0.1, prints one markdown table of headline
figures (each next to the baseline measured in the same run, with the ratio and the target) and
writes every detail as JSON (default ``benchmarks/results[-quick].json``). ``--quick`` uses small
sizes and short windows (seconds; CI runs it so the suite never rots): its figures show that
the benchmarks work, not what the machine can do. Exit status 1 when a benchmark fails to run;
missed targets are reported, not fatal (``--strict`` makes them fatal).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import psutil

NAMES = ("heartbeat", "fleet", "footprint", "activation", "ingest")
HEADER = ("benchmark", "measure", "value", "baseline", "ratio", "target", "ok")


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_cell(row.get(h)) for h in HEADER) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, seconds each")
    parser.add_argument("--only", nargs="+", choices=NAMES, help="run just these")
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    names = args.only or list(NAMES)
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "benchmarks": {}}
    rows: list[dict[str, Any]] = []
    failed = False
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"== {name}{' (quick)' if args.quick else ''}", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            result = module.run(quick=args.quick)
        except Exception as exc:  # noqa: BLE001 - report it, go on with the rest
            traceback.print_exc()
            failed = True
            results["benchmarks"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            rows.append({"benchmark": name, "measure": "did not run", "value": str(exc)[:80]})
            continue
        result["elapsed_seconds"] = round(time.monotonic() - started, 1)
        results["benchmarks"][name] = result
        rows += [{"benchmark": name, **row} for row in module.summarize(result)]
    out = args.json or Path(__file__).with_name(
        "results-quick.json" if args.quick else "results.json"
    )
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    m = results["machine"]
    print(f"\nMachine: {m['cpus']} CPUs, {m['memory_gib']} GiB, Python {m['python']}, {m['when']}")
    print(table(rows))
    print(f"\nDetails: {out}")
    missed = any(row.get("ok") is False for row in rows)
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
