"""Deterministic replay of captured journal records through a pipeline's topology.

Given the parsed plan of a pipeline version and the records of an incident bundle's
``journal.jsonl`` (one JSON object per line, in capture order), :func:`replay_audit` produces a
**replay audit v1** document. Everything in it is a function of its inputs only (no wall clock, no
randomness, no dict-order dependence), and :func:`encode_audit` renders it canonically, so the same
artifact, version and mode always give byte-identical audits.

Routing rules:

- **SingleRing**: each record visits every stage in the plan's (topological) order. Its shard is
  ``0`` under ``strict`` ordering, ``sha256(key) mod shards`` under ``per_key``, and
  ``seq mod shards`` under ``none``; ``target`` names that shard.
- **LaneGraph**: a record enters on its ``lane`` (default: the first ``Events`` lane) and flows
  breadth-first through roles reading that lane: ``stage`` and ``merge`` write all their outputs,
  ``bridge`` its one output, ``router`` one output chosen by ``sha256(key) mod len(outputs)``; a
  ``FanoutBroadcast`` output lane is recorded as a broadcast. Graphs are acyclic (validated), and
  the number of actions is capped.
- ``decision`` is ``would_process``/``would_route`` in ``dry_run`` and ``processed``/``routed`` in
  ``execute``.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import msgspec

if TYPE_CHECKING:
    from shared.spec import PipelinePlan

__all__ = [
    "AUDIT_VERSION",
    "MAX_ACTIONS",
    "JournalRecord",
    "encode_audit",
    "parse_journal",
    "replay_audit",
]

AUDIT_VERSION = 1
MAX_ACTIONS = 10_000
MAX_RECORDS = 100_000
SAMPLES = 5
Mode = Literal["dry_run", "execute"]


@dataclass(frozen=True, slots=True)
class JournalRecord:
    seq: int
    lane: str | None
    key: str
    raw: bytes


def parse_journal(text: bytes) -> tuple[list[JournalRecord], list[str]]:
    """Records of a ``journal.jsonl`` in capture order, and the problems of lines skipped."""
    records: list[JournalRecord] = []
    problems: list[str] = []
    for number, line in enumerate(text.splitlines()[:MAX_RECORDS], start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            problems.append(f"line {number} is not JSON")
            continue
        if not isinstance(value, dict):
            problems.append(f"line {number} is not a JSON object")
            continue
        seq = value.get("seq", number)
        lane = value.get("lane")
        records.append(
            JournalRecord(
                seq=seq if isinstance(seq, int) and not isinstance(seq, bool) else number,
                lane=lane if isinstance(lane, str) else None,
                key=str(value.get("key", "")),
                raw=json.dumps(value, sort_keys=True, separators=(",", ":")).encode(),
            )
        )
    return records, problems


def _bucket(key: str, buckets: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % max(1, buckets)


def _decision(mode: Mode, verb: str) -> str:
    return (
        f"would_{verb}" if mode == "dry_run" else ("processed" if verb == "process" else "routed")
    )


def _single_ring(
    plan: PipelinePlan, records: list[JournalRecord], mode: Mode
) -> list[dict[str, Any]]:
    assert plan.constraints is not None  # noqa: S101 - SingleRing plans always carry constraints
    shards = plan.constraints.shards
    ordering = plan.constraints.ordering
    actions: list[dict[str, Any]] = []
    for record in records:
        if ordering == "per_key":
            shard = _bucket(record.key, shards)
        elif ordering == "none":
            shard = record.seq % shards
        else:
            shard = 0
        for stage in plan.stages:
            actions.append(
                {
                    "action": "process",
                    "role": "stage",
                    "input_lane": "ring",
                    "output_lane": "ring",
                    "stage": stage.id,
                    "target": f"shard-{shard}",
                    "decision": _decision(mode, "process"),
                    "seq": record.seq,
                }
            )
            if len(actions) >= MAX_ACTIONS:
                return actions
    return actions


def _lane_graph(
    plan: PipelinePlan, records: list[JournalRecord], mode: Mode
) -> list[dict[str, Any]]:
    kinds = {lane.name: lane.kind for lane in plan.lanes}
    readers: dict[str, list[Any]] = {}
    for role in plan.roles:
        for lane in role.inputs:
            readers.setdefault(lane, []).append(role)
    entry = next((lane.name for lane in plan.lanes if lane.kind == "Events"), plan.lanes[0].name)
    actions: list[dict[str, Any]] = []
    for record in records:
        start = record.lane if record.lane in kinds else entry
        queue: deque[str] = deque([start])
        visited: set[tuple[str, str]] = set()
        while queue:
            lane = queue.popleft()
            for role in readers.get(lane, []):
                if (lane, role.name) in visited:
                    continue
                visited.add((lane, role.name))
                if role.kind == "router" and role.outputs:
                    outputs = [role.outputs[_bucket(record.key, len(role.outputs))]]
                    verb = "route"
                else:
                    outputs = list(role.outputs) or [""]
                    verb = "route" if role.kind == "bridge" else "process"
                for output in outputs:
                    broadcast = kinds.get(output) == "FanoutBroadcast"
                    actions.append(
                        {
                            "action": "broadcast"
                            if broadcast
                            else {"route": "route", "process": "process"}[verb],
                            "role": role.kind,
                            "input_lane": lane,
                            "output_lane": output or None,
                            "stage": role.name,
                            "target": output or role.name,
                            "decision": _decision(mode, verb),
                            "seq": record.seq,
                        }
                    )
                    if len(actions) >= MAX_ACTIONS:
                        return actions
                    if output:
                        queue.append(output)
    return actions


def replay_audit(
    *,
    plan: PipelinePlan,
    spec_hash: str,
    records: list[JournalRecord],
    mode: Mode,
    last_n: int | None,
    environment_id: str,
    approval_provided: bool,
    created_unix_ms: int,
) -> dict[str, Any]:
    """The replay audit v1 document (a plain dict, to be rendered with :func:`encode_audit`).

    ``created_unix_ms`` is supplied by the caller (the artifact's capture time) so the document
    does not depend on when the replay ran.
    """
    selected = records[-last_n:] if last_n else list(records)
    journal_lane = (
        "ring"
        if plan.target == "SingleRing"
        else next((lane.name for lane in plan.lanes if lane.kind == "Journal"), "journal")
    )
    if plan.target == "SingleRing":
        actions = _single_ring(plan, selected, mode)
    else:
        actions = _lane_graph(plan, selected, mode)
    return {
        "audit_v": AUDIT_VERSION,
        "created_unix_ms": created_unix_ms,
        "spec_sha256": spec_hash.removeprefix("sha256:"),
        "input": {
            "journal_lane": journal_lane,
            "last_n": last_n,
            "scanned_records": len(records),
            "selected_bytes": sum(len(r.raw) for r in selected),
            "sample_sha256": [hashlib.sha256(r.raw).hexdigest() for r in selected[:SAMPLES]],
        },
        "policy": {
            "environment": environment_id,
            "approval_provided": approval_provided,
            "mode": mode,
        },
        "actions": actions,
        "actions_truncated": len(actions) >= MAX_ACTIONS,
    }


_encoder = msgspec.json.Encoder(order="sorted")


def encode_audit(audit: dict[str, Any]) -> bytes:
    """Canonical bytes of an audit: sorted keys, no whitespace, trailing newline."""
    return _encoder.encode(audit) + b"\n"
