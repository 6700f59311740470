"""Validation of the LaneGraph target: named lanes, roles wired to them, and the graph they form.

Arity rules per role kind (counting the entries of ``inputs`` and ``outputs``):

- ``stage``: at least one lane in total (a source has only outputs, a sink only inputs);
- ``bridge``: exactly one input and one output;
- ``router``: exactly one input and at least two outputs;
- ``merge``: at least two inputs and exactly one output.

The directed graph lane -> role (for inputs) and role -> lane (for outputs) must be acyclic; this
is checked with an iterative search. A lane no role touches gets a warning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, get_args

from shared.spec._check import (
    MISSING,
    Sink,
    check_choice,
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
    DEFAULT_CAPACITY,
    MAX_CAPACITY,
    MAX_LANES,
    MAX_ROLE_LANES,
    MAX_ROLES,
    MIN_CAPACITY,
    GraphRole,
    Lane,
    LaneKind,
    OnFull,
    RoleKind,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["validate_lane_graph"]

_LANE_KINDS: Final[dict[str, LaneKind]] = {kind: kind for kind in get_args(LaneKind)}
_ON_FULL: Final[dict[str, OnFull]] = {policy: policy for policy in get_args(OnFull)}
_ROLE_KINDS: Final[dict[str, RoleKind]] = {kind: kind for kind in get_args(RoleKind)}
_ARITY: Final[dict[str, tuple[int, int | None, int, int | None, str]]] = {
    # kind: (min inputs, max inputs, min outputs, max outputs, rule)
    "bridge": (1, 1, 1, 1, "exactly one input and one output"),
    "router": (1, 1, 2, None, "exactly one input and at least two outputs"),
    "merge": (2, None, 1, 1, "at least two inputs and exactly one output"),
}


def _items(
    sink: Sink, raw: object, path: str, what: str, limit: int, *, required: bool
) -> list[object] | None:
    """Check a top-level lanes/roles array; return the entries to check one by one."""
    if raw is MISSING:
        if required:
            sink.error("plan.missing_field", path, f"a LaneGraph plan needs {what}")
        return None
    if not isinstance(raw, list):
        sink.error("plan.wrong_type", path, f"{what} must be an array, got {type_name(raw)}")
        return None
    if not raw:
        sink.error(
            f"lane_graph.no_{what}", path, f"a LaneGraph plan needs at least one {what[:-1]}"
        )
    elif len(raw) > limit:
        sink.error(
            f"lane_graph.too_many_{what}",
            path,
            f"at most {limit} {what} are allowed, got {len(raw)}; only the first {limit} were checked",
        )
    return raw[:limit]


def validate_lane_graph(
    sink: Sink, fields: Mapping[str, object], *, required: bool
) -> tuple[tuple[Lane, ...], tuple[GraphRole, ...]]:
    """Check the ``lanes`` and ``roles`` of a plan.

    Args:
        sink: Where diagnostics go.
        fields: The plan's top-level members.
        required: Whether ``lanes`` and ``roles`` must be present (the target is LaneGraph).

    Returns:
        The normalised lanes and roles (meaningful only when no error was reported).
    """
    lane_items = _items(
        sink, fields.get("lanes", MISSING), "$.lanes", "lanes", MAX_LANES, required=required
    )
    lanes: list[Lane] = []
    lane_names: list[str | None] = []
    lane_index: dict[str, int] = {}
    for i, item in enumerate(lane_items or ()):
        if sink.full:
            break
        lane, name = _lane(sink, item, index("$.lanes", i))
        lane_names.append(name)
        if lane is None:
            continue
        lanes.append(lane)
        if name in lane_index:
            sink.error(
                "lane_graph.duplicate_lane_name",
                member(index("$.lanes", i), "name"),
                f"lane name {show(lane.name)} is already used by lane {lane_index[lane.name]}",
            )
        elif name is not None:
            lane_index[name] = i

    role_items = _items(
        sink, fields.get("roles", MISSING), "$.roles", "roles", MAX_ROLES, required=required
    )
    roles: list[GraphRole] = []
    role_names: list[str | None] = []
    role_index: dict[str, int] = {}
    # Nodes 0..len(lane_names)-1 are lanes, the rest roles.
    adjacency: list[list[int]] = [[] for _ in lane_names]
    used: set[int] = set()
    for r, item in enumerate(role_items or ()):
        if sink.full:
            break
        node = len(adjacency)
        adjacency.append([])
        role, name, inputs, outputs = _role(sink, item, index("$.roles", r), lane_index)
        role_names.append(name)
        for lane_node in inputs:
            adjacency[lane_node].append(node)
        adjacency[node].extend(outputs)
        used.update(inputs, outputs)
        if role is None:
            continue
        roles.append(role)
        if name in role_index:
            sink.error(
                "lane_graph.duplicate_role_name",
                member(index("$.roles", r), "name"),
                f"role name {show(role.name)} is already used by role {role_index[role.name]}",
            )
        elif name is not None:
            role_index[name] = r

    _report_cycles(sink, adjacency, lane_names, role_names)
    if role_items and not sink.has_errors:  # advisory only once the graph is sound
        for name, i in lane_index.items():
            if i not in used:
                sink.warning(
                    "lane_graph.unused_lane",
                    index("$.lanes", i),
                    f"no role reads or writes lane {show(name)}",
                )
    return tuple(lanes), tuple(roles)


def _lane(sink: Sink, raw: object, path: str) -> tuple[Lane | None, str | None]:
    fields = check_object(sink, raw, path, ("name", "kind", "on_full", "capacity"), "a lane")
    if fields is None:
        return None, None
    name = get_identifier(sink, fields, path, "name", "lane name")
    kind = check_choice(
        sink, fields, path, "kind", _LANE_KINDS, code="lane_graph.unknown_lane_kind", default=None
    )
    on_full = check_choice(
        sink, fields, path, "on_full", _ON_FULL, code="lane_graph.unknown_on_full", default=None
    )
    capacity = fields.get("capacity", DEFAULT_CAPACITY)
    if not is_int(capacity):
        where = member(path, "capacity")
        sink.error(
            "plan.wrong_type", where, f"capacity must be an integer, got {type_name(capacity)}"
        )
        capacity = DEFAULT_CAPACITY
    elif not MIN_CAPACITY <= capacity <= MAX_CAPACITY or capacity & (capacity - 1):
        sink.error(
            "lane_graph.invalid_capacity",
            member(path, "capacity"),
            f"capacity must be a power of two between {MIN_CAPACITY} and {MAX_CAPACITY}, "
            f"got {show_int(capacity)}",
        )
    lane = Lane(
        name=name or "", kind=kind or "Events", on_full=on_full or "Block", capacity=capacity
    )
    return lane, name


def _role(
    sink: Sink, raw: object, path: str, lane_index: Mapping[str, int]
) -> tuple[GraphRole | None, str | None, list[int], list[int]]:
    """Check one role; also return the lane indexes its inputs and outputs resolve to."""
    fields = check_object(sink, raw, path, ("name", "kind", "inputs", "outputs"), "a role")
    if fields is None:
        return None, None, [], []
    name = get_identifier(sink, fields, path, "name", "role name")
    kind = check_choice(
        sink, fields, path, "kind", _ROLE_KINDS, code="lane_graph.unknown_role_kind", default=None
    )
    inputs, input_lanes = _lane_refs(
        sink, fields.get("inputs", MISSING), path, "inputs", lane_index
    )
    outputs, output_lanes = _lane_refs(
        sink, fields.get("outputs", MISSING), path, "outputs", lane_index
    )
    if kind is not None and inputs is not None and outputs is not None:
        n_in, n_out = len(inputs), len(outputs)
        if kind == "stage":
            if n_in + n_out == 0:
                sink.error(
                    "lane_graph.bad_arity",
                    path,
                    "a stage role needs at least one input or output lane",
                )
        else:
            min_in, max_in, min_out, max_out, rule = _ARITY[kind]
            if not (min_in <= n_in <= (max_in or n_in) and min_out <= n_out <= (max_out or n_out)):
                sink.error(
                    "lane_graph.bad_arity",
                    path,
                    f"a {kind} role needs {rule}; it has {n_in} inputs and {n_out} outputs",
                )
    role = GraphRole(
        name=name or "",
        kind=kind or "stage",
        inputs=tuple(inputs or ()),
        outputs=tuple(outputs or ()),
    )
    return role, name, input_lanes, output_lanes


def _lane_refs(
    sink: Sink, raw: object, role_path: str, key: str, lane_index: Mapping[str, int]
) -> tuple[list[str] | None, list[int]]:
    """Check a role's inputs or outputs: return the names and the lanes they resolve to."""
    if raw is MISSING:
        return [], []
    path = member(role_path, key)
    if not isinstance(raw, list):
        sink.error(
            "plan.wrong_type", path, f"{key} must be an array of lane names, got {type_name(raw)}"
        )
        return None, []
    if len(raw) > MAX_ROLE_LANES:
        sink.error(
            "lane_graph.too_many_lane_refs",
            path,
            f"a role may list at most {MAX_ROLE_LANES} {key}, got {len(raw)}",
        )
    names: list[str] = []
    resolved: list[int] = []
    for j, ref in enumerate(raw[:MAX_ROLE_LANES]):
        where = index(path, j)
        if not isinstance(ref, str):
            sink.error("plan.wrong_type", where, f"expected a lane name, got {type_name(ref)}")
            continue
        if ref in names:
            sink.error(
                "lane_graph.duplicate_lane_ref", where, f"lane {show(ref)} is listed twice in {key}"
            )
        elif ref not in lane_index:
            sink.error(
                "lane_graph.unresolved_lane", where, f"no lane named {show(ref)} is declared"
            )
        else:
            resolved.append(lane_index[ref])
        names.append(ref)
    return names, resolved


def _report_cycles(
    sink: Sink,
    adjacency: list[list[int]],
    lane_names: list[str | None],
    role_names: list[str | None],
) -> None:
    lanes = len(lane_names)

    def label(node: int) -> str:
        if node < lanes:
            name = lane_names[node]
            return f"lane {show(name)}" if name is not None else f"lane {node}"
        name = role_names[node - lanes]
        return f"role {show(name)}" if name is not None else f"role {node - lanes}"

    for first, text in describe_cycles(adjacency, label, anchor=lambda node: node >= lanes):
        sink.error(
            "lane_graph.cycle",
            index("$.roles", first - lanes),
            f"lanes and roles form a cycle: {text}",
        )
