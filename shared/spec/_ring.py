"""Validation of the SingleRing target: stages, constraints and ring options.

Stages are listed in topological order: every ``depends_on`` index points to an earlier stage, so
a valid SingleRing can never have a cycle. Forward and self references are reported as such; when
forward references close a loop, one ``single_ring.dependency_cycle`` names it too. Only the first
:data:`STAGE_SCAN_LIMIT` stages (and ``depends_on`` entries) are checked one by one, so a plan
with 10,000 stages costs no more than one with 64.
"""

from __future__ import annotations

from typing import Final, get_args

from shared.spec._check import (
    MISSING,
    Sink,
    check_choice,
    check_identifier,
    check_object,
    get_identifier,
    index,
    is_int,
    member,
    show,
    show_int,
    type_name,
)
from shared.spec._graph import describe_cycles
from shared.spec._model import (
    MAX_SHARDS,
    MAX_STAGES,
    Constraints,
    Ordering,
    SingleRingOptions,
    Stage,
)

__all__ = ["STAGE_SCAN_LIMIT", "validate_constraints", "validate_options", "validate_stages"]

#: Stages (and depends_on entries) past this many are not checked one by one.
STAGE_SCAN_LIMIT: Final = 64

_ORDERINGS: Final[dict[str, Ordering]] = {ordering: ordering for ordering in get_args(Ordering)}


def validate_stages(sink: Sink, raw: object, *, required: bool) -> tuple[Stage, ...]:
    """Check ``$.stages`` and return the stages normalised (only the first 64 are checked)."""
    path = "$.stages"
    if raw is MISSING:
        if required:
            sink.error(
                "plan.missing_field",
                path,
                f"a SingleRing plan needs stages: 1 to {MAX_STAGES} stages in topological order",
            )
        return ()
    if not isinstance(raw, list):
        sink.error("plan.wrong_type", path, f"stages must be an array, got {type_name(raw)}")
        return ()
    count = len(raw)
    if count == 0:
        sink.error("single_ring.no_stages", path, "a SingleRing plan needs at least one stage")
    elif count > MAX_STAGES:
        more = (
            f"; only the first {STAGE_SCAN_LIMIT} were checked" if count > STAGE_SCAN_LIMIT else ""
        )
        sink.error(
            "single_ring.too_many_stages",
            path,
            f"a SingleRing has at most {MAX_STAGES} stages, this plan has {count}{more}",
        )
    scanned = raw[:STAGE_SCAN_LIMIT]
    ids: list[str | None] = [None] * len(scanned)
    edges: list[list[int]] = [[] for _ in scanned]
    first: dict[str, int] = {}
    stages: list[Stage] = []
    for i, item in enumerate(scanned):
        if sink.full:
            break
        fields = check_object(sink, item, index(path, i), ("id", "depends_on"), "a stage")
        if fields is None:
            continue
        stage_id = get_identifier(sink, fields, index(path, i), "id", "stage id")
        if stage_id is not None:
            if stage_id in first:
                sink.error(
                    "single_ring.duplicate_stage_id",
                    member(index(path, i), "id"),
                    f"stage id {show(stage_id)} is already used by stage {first[stage_id]}",
                )
            else:
                first[stage_id] = i
            ids[i] = stage_id
        depends_on = _depends_on(sink, fields.get("depends_on", MISSING), i, count, ids)
        edges[i] = [dep for dep in depends_on if 0 <= dep < len(scanned) and dep != i]
        stages.append(Stage(id=stage_id or "", depends_on=depends_on))
    if any(dep > i for i, deps in enumerate(edges) for dep in deps):
        for start, text in describe_cycles(edges, lambda i: _label(i, ids), anchor=lambda _: True):
            sink.error(
                "single_ring.dependency_cycle",
                index(path, start),
                f"stages depend on each other in a cycle: {text}",
            )
    return tuple(stages)


def _label(stage: int, ids: list[str | None]) -> str:
    stage_id = ids[stage]
    return f"stage {stage}" if stage_id is None else f"stage {stage} ({show(stage_id)})"


def _depends_on(
    sink: Sink, raw: object, own: int, count: int, ids: list[str | None]
) -> tuple[int, ...]:
    if raw is MISSING:
        return ()
    path = member(index("$.stages", own), "depends_on")
    if not isinstance(raw, list):
        sink.error(
            "plan.wrong_type",
            path,
            f"depends_on must be an array of stage indexes, got {type_name(raw)}",
        )
        return ()
    result: list[int] = []
    previous: int | None = None
    for j, dep in enumerate(raw[:STAGE_SCAN_LIMIT]):
        where = index(path, j)
        if not is_int(dep):
            sink.error("plan.wrong_type", where, f"expected a stage index, got {type_name(dep)}")
            continue
        if previous is not None and dep <= previous:
            sink.error(
                "single_ring.depends_on_not_increasing",
                where,
                f"depends_on must be strictly increasing: {show_int(dep)} follows "
                f"{show_int(previous)}",
            )
        previous = dep
        result.append(dep)
        who = _label(own, ids)
        if dep < 0:
            sink.error(
                "single_ring.invalid_dependency",
                where,
                f"stage indexes start at 0, got {show_int(dep)}",
            )
        elif dep == own:
            sink.error("single_ring.self_dependency", where, f"{who} depends on itself")
        elif dep >= count:
            sink.error(
                "single_ring.forward_dependency",
                where,
                f"{who} depends on stage {show_int(dep)}, but the plan has only {count} "
                + ("stage" if count == 1 else "stages"),
            )
        elif dep > own:
            sink.error(
                "single_ring.forward_dependency",
                where,
                f"{who} depends on stage {dep}, which is listed after it; list stages in "
                "topological order (dependencies point to earlier stages), which also rules "
                "out cycles",
            )
    return tuple(result)


def validate_constraints(sink: Sink, raw: object) -> Constraints:
    """Check ``$.constraints`` (absent means all defaults) and return it normalised."""
    path = "$.constraints"
    if raw is MISSING:
        return Constraints()
    fields = check_object(sink, raw, path, ("shards", "ordering", "shard_key"), "constraints")
    if fields is None:
        return Constraints()
    shards: int | None = 1
    value = fields.get("shards", MISSING)
    if value is not MISSING:
        shards = None
        if not is_int(value):
            where = member(path, "shards")
            sink.error(
                "plan.wrong_type", where, f"shards must be an integer, got {type_name(value)}"
            )
        elif not 1 <= value <= MAX_SHARDS:
            sink.error(
                "constraints.invalid_shards",
                member(path, "shards"),
                f"shards must be between 1 and {MAX_SHARDS}, got {show_int(value)}",
            )
        else:
            shards = value
    ordering = check_choice(
        sink,
        fields,
        path,
        "ordering",
        _ORDERINGS,
        code="constraints.unknown_ordering",
        default="strict",
    )
    shard_key: str | None = None
    value = fields.get("shard_key", MISSING)
    key_ok = value is MISSING or value is None
    if not key_ok:
        shard_key = check_identifier(sink, value, member(path, "shard_key"), "shard_key")
        key_ok = shard_key is not None
    if ordering == "strict" and shards is not None and shards != 1:
        sink.error(
            "constraints.strict_requires_single_shard",
            member(path, "shards"),
            f"ordering=strict (the default) needs exactly 1 shard, got {shards}; use "
            "ordering=per_key with a shard_key (or ordering=none) to shard",
        )
    if ordering == "per_key" and key_ok and shard_key is None:
        sink.error(
            "constraints.per_key_requires_shard_key",
            member(path, "shard_key"),
            "ordering=per_key needs a shard_key naming the field events are ordered by",
        )
    if ordering is not None and ordering != "per_key" and shard_key is not None:
        sink.warning(
            "constraints.shard_key_unused",
            member(path, "shard_key"),
            f"shard_key is ignored unless ordering=per_key (ordering is {ordering})",
        )
    return Constraints(shards=shards or 1, ordering=ordering or "strict", shard_key=shard_key)


def validate_options(sink: Sink, raw: object) -> SingleRingOptions:
    """Check ``$.single_ring`` (absent means all defaults) and return it normalised."""
    path = "$.single_ring"
    if raw is MISSING:
        return SingleRingOptions()
    fields = check_object(sink, raw, path, ("producer", "scheduling"), "single_ring options")
    if fields is None:
        return SingleRingOptions()
    check_choice(
        sink,
        fields,
        path,
        "producer",
        {"single": "single"},
        code="single_ring.unsupported_producer",
        default="single",
    )
    check_choice(
        sink,
        fields,
        path,
        "scheduling",
        {"dedicated": "dedicated"},
        code="single_ring.unsupported_scheduling",
        default="dedicated",
    )
    return SingleRingOptions()
