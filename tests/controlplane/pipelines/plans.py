"""Plans used across the pipeline tests (the shapes documented in the issue)."""

from __future__ import annotations

from typing import Any

SINGLE_RING: dict[str, Any] = {
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

LANE_GRAPH: dict[str, Any] = {
    "name": "fanout",
    "target": "LaneGraph",
    "lanes": [
        {"name": "in", "kind": "Events", "on_full": "Block"},
        {"name": "out", "kind": "Journal", "on_full": "Drop"},
    ],
    "roles": [{"name": "parse", "kind": "stage", "inputs": ["in"], "outputs": ["out"]}],
}

INVALID: dict[str, Any] = {
    **SINGLE_RING,
    "stages": [{"id": f"s{i}"} for i in range(5)],
    "single_ring": {"producer": "mpmc", "scheduling": "dedicated"},
}
