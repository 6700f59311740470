"""The normalised pipeline plan, the diagnostics, the compile result and the limits.

:class:`PipelinePlan` is one Struct with optional, target-specific sections rather than a tagged
union, so ``plan.name`` and ``plan.target`` work without narrowing. A *normalised* plan (what
:func:`~shared.spec.validate_plan` and :func:`~shared.spec.parse_spec_kv` return) obeys:

- ``target == "SingleRing"``: ``stages`` has 1 to :data:`MAX_STAGES` entries, ``constraints`` and
  ``single_ring`` are set (defaults filled in), ``lanes`` and ``roles`` are empty.
- ``target == "LaneGraph"``: ``lanes`` and ``roles`` are non-empty, ``stages`` is empty and
  ``constraints`` and ``single_ring`` are ``None``.

Lists are tuples so that a normalised plan is immutable and hashable.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final, Literal

import msgspec

__all__ = [
    "DEFAULT_CAPACITY",
    "DIAGNOSTIC_CODES",
    "MAX_CAPACITY",
    "MAX_DIAGNOSTICS",
    "MAX_IDENTIFIER_LENGTH",
    "MAX_LANES",
    "MAX_ROLES",
    "MAX_ROLE_LANES",
    "MAX_SHARDS",
    "MAX_STAGES",
    "MIN_CAPACITY",
    "SPEC_VERSION",
    "CompileResult",
    "Constraints",
    "Diagnostic",
    "GraphRole",
    "Lane",
    "LaneKind",
    "OnFull",
    "Ordering",
    "PipelinePlan",
    "Producer",
    "RoleKind",
    "Scheduling",
    "SingleRingOptions",
    "Stage",
    "Target",
]

#: The ``spec.version`` written on the first line of every spec.kv text.
SPEC_VERSION: Final = 1
#: A SingleRing runs at most this many stages.
MAX_STAGES: Final = 4
MAX_SHARDS: Final = 1024
MAX_LANES: Final = 256
MAX_ROLES: Final = 256
#: The most lanes one role may list in ``inputs`` (and, separately, in ``outputs``).
MAX_ROLE_LANES: Final = 64
MIN_CAPACITY: Final = 2
MAX_CAPACITY: Final = 1 << 24
DEFAULT_CAPACITY: Final = 1024
#: Stage ids, lane and role names, shard keys and the plan name are at most this long.
MAX_IDENTIFIER_LENGTH: Final = 64
#: The most diagnostics one validation returns, the final ``plan.diagnostics_truncated`` included.
MAX_DIAGNOSTICS: Final = 100

Target = Literal["SingleRing", "LaneGraph"]
Ordering = Literal["strict", "per_key", "none"]
Producer = Literal["single"]
Scheduling = Literal["dedicated"]
LaneKind = Literal["Events", "Journal", "SequencedSlots", "FanoutBroadcast"]
OnFull = Literal["Block", "Drop"]
RoleKind = Literal["stage", "bridge", "router", "merge"]

#: Every diagnostic code the validator can emit, with a one-line description. Codes are stable.
DIAGNOSTIC_CODES: Final = MappingProxyType(
    {
        "plan.wrong_type": "a value has the wrong JSON type (the plan itself must be an object)",
        "plan.non_string_key": "an object has a key that is not a string",
        "plan.unknown_field": "an object has a field the schema does not define",
        "plan.missing_field": "a required field is absent",
        "plan.field_not_for_target": "a field of the other target (e.g. lanes on a SingleRing plan)",
        "plan.invalid_name": "the plan name does not match ^[a-z0-9][a-z0-9_.-]{0,63}$",
        "plan.invalid_identifier": "an id or name is empty, longer than 64 characters, "
        "has control characters or surrounding whitespace",
        "plan.unknown_target": "target is neither SingleRing nor LaneGraph",
        "plan.diagnostics_truncated": "more problems than MAX_DIAGNOSTICS; the rest are omitted",
        "single_ring.no_stages": "the stages list is empty",
        "single_ring.too_many_stages": "more than MAX_STAGES (4) stages",
        "single_ring.duplicate_stage_id": "two stages share an id",
        "single_ring.invalid_dependency": "a depends_on index is negative",
        "single_ring.self_dependency": "a stage depends on itself",
        "single_ring.forward_dependency": "a depends_on index points at the same or a later "
        "stage, or past the end (stages must be in topological order)",
        "single_ring.depends_on_not_increasing": "depends_on is not strictly increasing",
        "single_ring.dependency_cycle": "the (forward) dependencies form a cycle",
        "single_ring.unsupported_producer": "single_ring.producer is not 'single'",
        "single_ring.unsupported_scheduling": "single_ring.scheduling is not 'dedicated'",
        "constraints.invalid_shards": "shards is not between 1 and MAX_SHARDS",
        "constraints.unknown_ordering": "ordering is not strict, per_key or none",
        "constraints.strict_requires_single_shard": "ordering=strict with shards != 1",
        "constraints.per_key_requires_shard_key": "ordering=per_key without a shard_key",
        "constraints.shard_key_unused": "(warning) shard_key is set but ordering is not per_key",
        "lane_graph.no_lanes": "the lanes list is empty",
        "lane_graph.no_roles": "the roles list is empty",
        "lane_graph.too_many_lanes": "more than MAX_LANES lanes",
        "lane_graph.too_many_roles": "more than MAX_ROLES roles",
        "lane_graph.too_many_lane_refs": "a role lists more than MAX_ROLE_LANES inputs or outputs",
        "lane_graph.duplicate_lane_name": "two lanes share a name",
        "lane_graph.duplicate_role_name": "two roles share a name",
        "lane_graph.unknown_lane_kind": "lane kind is not Events, Journal, SequencedSlots or "
        "FanoutBroadcast",
        "lane_graph.unknown_on_full": "lane on_full is not Block or Drop",
        "lane_graph.invalid_capacity": "lane capacity is not a power of two in [2, 2**24]",
        "lane_graph.unknown_role_kind": "role kind is not stage, bridge, router or merge",
        "lane_graph.unresolved_lane": "a role input or output names no declared lane",
        "lane_graph.duplicate_lane_ref": "a role lists the same lane twice in inputs (or outputs)",
        "lane_graph.bad_arity": "a role has the wrong number of inputs or outputs for its kind",
        "lane_graph.cycle": "the lane -> role -> lane graph has a cycle",
        "lane_graph.unused_lane": "(warning) no role reads or writes a lane",
        "spec_kv.unparseable": "spec.kv text is malformed or not canonical (validate_spec_kv)",
    }
)


class Diagnostic(msgspec.Struct, frozen=True, kw_only=True):
    """One problem with a plan.

    ``code`` is stable (see :data:`DIAGNOSTIC_CODES`), ``path`` is a JSON path into the submitted
    plan such as ``$.stages[4]`` or ``$.constraints.shards``, ``message`` is for humans.
    """

    code: str
    path: str
    message: str
    severity: Literal["error", "warning"] = "error"


class CompileResult(msgspec.Struct, kw_only=True):
    """The outcome of :func:`~shared.spec.compile_plan`.

    ``ok`` is true when there is no error-severity diagnostic (warnings may remain); then
    ``spec_kv`` holds the canonical text and ``spec_hash`` its ``sha256:<hex>`` digest.
    """

    ok: bool
    spec_kv: str | None
    spec_hash: str | None
    diagnostics: list[Diagnostic]


class Stage(msgspec.Struct, frozen=True, kw_only=True):
    """A SingleRing stage; ``depends_on`` holds indexes of earlier stages, strictly increasing."""

    id: str
    depends_on: tuple[int, ...] = ()


class Constraints(msgspec.Struct, frozen=True, kw_only=True):
    """Sharding and ordering of a SingleRing plan."""

    shards: int = 1
    ordering: Ordering = "strict"
    shard_key: str | None = None


class SingleRingOptions(msgspec.Struct, frozen=True, kw_only=True):
    """Ring options; only one producer and dedicated consumer threads are supported today."""

    producer: Producer = "single"
    scheduling: Scheduling = "dedicated"


class Lane(msgspec.Struct, frozen=True, kw_only=True):
    """A named LaneGraph lane; ``capacity`` is a power of two."""

    name: str
    kind: LaneKind
    on_full: OnFull
    capacity: int = DEFAULT_CAPACITY


class GraphRole(msgspec.Struct, frozen=True, kw_only=True):
    """A LaneGraph role reading ``inputs`` and writing ``outputs`` (lane names, in order)."""

    name: str
    kind: RoleKind
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


class PipelinePlan(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A normalised plan; see the module docstring for which sections each target sets.

    Encoding omits the other target's empty sections, so ``msgspec.json.encode(plan)`` is itself
    a valid authored plan that compiles to the same spec.kv.
    """

    name: str
    target: Target
    stages: tuple[Stage, ...] = ()
    constraints: Constraints | None = None
    single_ring: SingleRingOptions | None = None
    lanes: tuple[Lane, ...] = ()
    roles: tuple[GraphRole, ...] = ()
