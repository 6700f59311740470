"""The pipeline spec compiler: examples, golden text, every diagnostic code, hostile input."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import msgspec
import pytest

from shared.spec import (
    DIAGNOSTIC_CODES,
    MAX_DIAGNOSTICS,
    CompileResult,
    Constraints,
    Diagnostic,
    GraphRole,
    Lane,
    PipelinePlan,
    SingleRingOptions,
    Stage,
    compile_plan,
    validate_plan,
)

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

SINGLE_RING_KV = """\
spec.version=1
pipeline.name=orders
pipeline.target=SingleRing
pipeline.stages.count=3
pipeline.stages.0.id=decode
pipeline.stages.0.depends_on.count=0
pipeline.stages.1.id=enrich
pipeline.stages.1.depends_on.count=1
pipeline.stages.1.depends_on.0=0
pipeline.stages.2.id=publish
pipeline.stages.2.depends_on.count=1
pipeline.stages.2.depends_on.0=1
pipeline.constraints.shards=1
pipeline.constraints.ordering=strict
pipeline.constraints.shard_key=
pipeline.single_ring.producer=single
pipeline.single_ring.scheduling=dedicated
"""

WARNINGS = {"constraints.shard_key_unused", "lane_graph.unused_lane"}


def ring(**fields: Any) -> dict[str, Any]:
    """The SingleRing example with some top-level fields replaced (``None`` removes one)."""
    plan = copy.deepcopy(SINGLE_RING)
    plan.update(fields)
    return {key: value for key, value in plan.items() if value is not None}


def graph(**fields: Any) -> dict[str, Any]:
    """The LaneGraph example with some top-level fields replaced (``None`` removes one)."""
    plan = copy.deepcopy(LANE_GRAPH)
    plan.update(fields)
    return {key: value for key, value in plan.items() if value is not None}


def stages(*depends_on: list[Any]) -> list[dict[str, Any]]:
    return [{"id": f"s{i}", "depends_on": deps} for i, deps in enumerate(depends_on)]


def lane(name: str, kind: str = "Events", on_full: str = "Block", **more: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "on_full": on_full, **more}


def role(name: str, kind: str, inputs: Any, outputs: Any) -> dict[str, Any]:
    return {"name": name, "kind": kind, "inputs": inputs, "outputs": outputs}


LANES_ABC = [lane("a"), lane("b"), lane("c")]
INT_KEY: dict[object, Any] = {1: "x"}
INT_KEY.update(ring())


def test_single_ring_example_compiles_to_golden_text() -> None:
    result = compile_plan(SINGLE_RING)
    assert result == CompileResult(
        ok=True,
        spec_kv=SINGLE_RING_KV,
        spec_hash="sha256:" + hashlib.sha256(SINGLE_RING_KV.encode()).hexdigest(),
        diagnostics=[],
    )


def test_single_ring_example_normalises_with_defaults() -> None:
    plan, diagnostics = validate_plan(SINGLE_RING)
    assert diagnostics == []
    assert plan == PipelinePlan(
        name="orders",
        target="SingleRing",
        stages=(
            Stage(id="decode"),
            Stage(id="enrich", depends_on=(0,)),
            Stage(id="publish", depends_on=(1,)),
        ),
        constraints=Constraints(shards=1, ordering="strict", shard_key=None),
        single_ring=SingleRingOptions(),
    )


def test_lane_graph_example_compiles() -> None:
    result = compile_plan(LANE_GRAPH)
    assert result.ok
    assert result.diagnostics == []
    assert result.spec_kv is not None
    assert result.spec_hash == "sha256:" + hashlib.sha256(result.spec_kv.encode()).hexdigest()
    plan, _ = validate_plan(LANE_GRAPH)
    assert plan is not None
    assert plan.lanes == (
        Lane(name="in", kind="Events", on_full="Block", capacity=1024),
        Lane(name="out", kind="Journal", on_full="Drop", capacity=1024),
    )
    assert plan.roles == (GraphRole(name="parse", kind="stage", inputs=("in",), outputs=("out",)),)
    assert (plan.stages, plan.constraints, plan.single_ring) == ((), None, None)


def test_omitted_defaults_compile_to_the_same_text() -> None:
    minimal = {"target": "SingleRing", "name": "orders", "stages": SINGLE_RING["stages"]}
    assert compile_plan(minimal).spec_kv == SINGLE_RING_KV


def test_valid_variants_compile() -> None:
    per_key = ring(constraints={"shards": 8, "ordering": "per_key", "shard_key": "account"})
    none = ring(constraints={"shards": 3, "ordering": "none"})
    diamond = ring(stages=stages([], [0], [0], [1, 2]))
    wired = graph(
        lanes=[lane("a"), lane("b", capacity=2), lane("c", capacity=1 << 24), lane("d"), lane("e")],
        roles=[
            role("split", "router", ["a"], ["b", "c"]),
            role("hop", "bridge", ["b"], ["d"]),
            role("join", "merge", ["c", "d"], ["e"]),
            role("sink", "stage", ["e"], []),
        ],
    )
    for plan in (per_key, none, diamond, wired):
        result = compile_plan(plan)
        assert result.ok, result.diagnostics
        assert result.diagnostics == []


# --- one case per diagnostic code: (plan, code, path) ----------------------------------------

INVALID: list[Any] = [
    pytest.param([], "plan.wrong_type", "$", id="plan-not-object"),
    pytest.param(ring(name=5), "plan.wrong_type", "$.name", id="name-not-string"),
    pytest.param(ring(stages="abc"), "plan.wrong_type", "$.stages", id="stages-not-array"),
    pytest.param(ring(stages=[7]), "plan.wrong_type", "$.stages[0]", id="stage-not-object"),
    pytest.param(
        ring(stages=stages([], [True])),
        "plan.wrong_type",
        "$.stages[1].depends_on[0]",
        id="bool-is-not-an-index",
    ),
    pytest.param(
        ring(stages=stages([], [0.0])), "plan.wrong_type", "$.stages[1].depends_on[0]", id="float"
    ),
    pytest.param(
        ring(stages=[{"id": "a", "depends_on": 0}]),
        "plan.wrong_type",
        "$.stages[0].depends_on",
        id="depends-on-not-array",
    ),
    pytest.param(
        ring(constraints={"shards": "2"}), "plan.wrong_type", "$.constraints.shards", id="shards"
    ),
    pytest.param(ring(constraints=[]), "plan.wrong_type", "$.constraints", id="constraints"),
    pytest.param(
        ring(single_ring={"producer": None}),
        "plan.wrong_type",
        "$.single_ring.producer",
        id="producer-null",
    ),
    pytest.param(graph(lanes=[None]), "plan.wrong_type", "$.lanes[0]", id="lane-null"),
    pytest.param(
        graph(lanes=[lane("in", capacity="big"), lane("out")]),
        "plan.wrong_type",
        "$.lanes[0].capacity",
        id="capacity-string",
    ),
    pytest.param(
        graph(roles=[role("r", "stage", ["in", 3], [])]),
        "plan.wrong_type",
        "$.roles[0].inputs[1]",
        id="lane-ref-int",
    ),
    pytest.param(
        graph(roles=[role("r", "stage", "in", [])]),
        "plan.wrong_type",
        "$.roles[0].inputs",
        id="inputs-string",
    ),
    pytest.param(INT_KEY, "plan.non_string_key", "$", id="int-key"),
    pytest.param(
        ring(stages=[{"id": "a", (1, 2): 3}]),
        "plan.non_string_key",
        "$.stages[0]",
        id="tuple-key",
    ),
    pytest.param(ring(bogus=1), "plan.unknown_field", "$.bogus", id="unknown-top-field"),
    pytest.param(
        ring(stages=[{"id": "a", "name": "b"}]),
        "plan.unknown_field",
        "$.stages[0].name",
        id="unknown-stage-field",
    ),
    pytest.param(
        ring(constraints={"odd key": 1}),
        "plan.unknown_field",
        '$.constraints["odd key"]',
        id="unknown-odd-key",
    ),
    pytest.param(
        graph(lanes=[lane("in", size=4), lane("out")]),
        "plan.unknown_field",
        "$.lanes[0].size",
        id="unknown-lane-field",
    ),
    pytest.param(ring(name=None), "plan.missing_field", "$.name", id="missing-name"),
    pytest.param(ring(target=None), "plan.missing_field", "$.target", id="missing-target"),
    pytest.param(ring(stages=None), "plan.missing_field", "$.stages", id="missing-stages"),
    pytest.param(
        ring(stages=[{"depends_on": []}]), "plan.missing_field", "$.stages[0].id", id="no-id"
    ),
    pytest.param(graph(lanes=None), "plan.missing_field", "$.lanes", id="missing-lanes"),
    pytest.param(graph(roles=None), "plan.missing_field", "$.roles", id="missing-roles"),
    pytest.param(
        graph(lanes=[{"name": "in", "on_full": "Block"}, lane("out")]),
        "plan.missing_field",
        "$.lanes[0].kind",
        id="missing-lane-kind",
    ),
    pytest.param(
        graph(roles=[{"name": "r", "inputs": ["in"]}]),
        "plan.missing_field",
        "$.roles[0].kind",
        id="missing-role-kind",
    ),
    pytest.param(
        ring(lanes=LANE_GRAPH["lanes"]), "plan.field_not_for_target", "$.lanes", id="lanes-on-ring"
    ),
    pytest.param(
        graph(stages=SINGLE_RING["stages"]),
        "plan.field_not_for_target",
        "$.stages",
        id="stages-on-graph",
    ),
    pytest.param(
        graph(constraints={}), "plan.field_not_for_target", "$.constraints", id="constraints-graph"
    ),
    pytest.param(ring(name="Orders"), "plan.invalid_name", "$.name", id="upper-case-name"),
    pytest.param(ring(name=""), "plan.invalid_name", "$.name", id="empty-name"),
    pytest.param(ring(name="a" * 65), "plan.invalid_name", "$.name", id="long-name"),
    pytest.param(ring(name="orders\n"), "plan.invalid_name", "$.name", id="name-newline"),
    pytest.param(
        ring(stages=[{"id": ""}]), "plan.invalid_identifier", "$.stages[0].id", id="empty-id"
    ),
    pytest.param(
        ring(stages=[{"id": "x" * 65}]), "plan.invalid_identifier", "$.stages[0].id", id="long-id"
    ),
    pytest.param(
        ring(stages=[{"id": " x"}]), "plan.invalid_identifier", "$.stages[0].id", id="space-id"
    ),
    pytest.param(
        ring(stages=[{"id": "a\nb"}]), "plan.invalid_identifier", "$.stages[0].id", id="newline"
    ),
    pytest.param(
        ring(stages=[{"id": "\ud800"}]),
        "plan.invalid_identifier",
        "$.stages[0].id",
        id="surrogate-id",
    ),
    pytest.param(
        ring(constraints={"ordering": "per_key", "shard_key": ""}),
        "plan.invalid_identifier",
        "$.constraints.shard_key",
        id="empty-shard-key",
    ),
    pytest.param(
        graph(lanes=[lane("\x00"), lane("out")]),
        "plan.invalid_identifier",
        "$.lanes[0].name",
        id="nul-lane-name",
    ),
    pytest.param(ring(target="MultiRing"), "plan.unknown_target", "$.target", id="unknown-target"),
    pytest.param(
        ring(**{f"junk{i}": i for i in range(150)}),
        "plan.diagnostics_truncated",
        "$",
        id="truncated",
    ),
    pytest.param(ring(stages=[]), "single_ring.no_stages", "$.stages", id="no-stages"),
    pytest.param(
        ring(stages=stages([], [0], [1], [2], [3])),
        "single_ring.too_many_stages",
        "$.stages",
        id="five-stages",
    ),
    pytest.param(
        ring(stages=[{"id": "a"}, {"id": "a"}]),
        "single_ring.duplicate_stage_id",
        "$.stages[1].id",
        id="duplicate-stage-id",
    ),
    pytest.param(
        ring(stages=stages([], [-1])),
        "single_ring.invalid_dependency",
        "$.stages[1].depends_on[0]",
        id="negative-index",
    ),
    pytest.param(
        ring(stages=stages([], [0, 1])),
        "single_ring.self_dependency",
        "$.stages[1].depends_on[1]",
        id="self-dependency",
    ),
    pytest.param(
        ring(stages=stages([2], [], [])),
        "single_ring.forward_dependency",
        "$.stages[0].depends_on[0]",
        id="forward-dependency",
    ),
    pytest.param(
        ring(stages=stages([], [9])),
        "single_ring.forward_dependency",
        "$.stages[1].depends_on[0]",
        id="dependency-past-end",
    ),
    pytest.param(
        ring(stages=stages([], [], [1, 0])),
        "single_ring.depends_on_not_increasing",
        "$.stages[2].depends_on[1]",
        id="decreasing",
    ),
    pytest.param(
        ring(stages=stages([], [0, 0])),
        "single_ring.depends_on_not_increasing",
        "$.stages[1].depends_on[1]",
        id="repeated",
    ),
    pytest.param(
        ring(stages=stages([], [2], [1])),
        "single_ring.dependency_cycle",
        "$.stages[1]",
        id="cycle",
    ),
    pytest.param(
        ring(stages=stages([1], [0])),
        "single_ring.forward_dependency",
        "$.stages[0].depends_on[0]",
        id="cycle-is-a-forward-ref",
    ),
    pytest.param(
        ring(single_ring={"producer": "mpmc"}),
        "single_ring.unsupported_producer",
        "$.single_ring.producer",
        id="producer-mpmc",
    ),
    pytest.param(
        ring(single_ring={"scheduling": "shared"}),
        "single_ring.unsupported_scheduling",
        "$.single_ring.scheduling",
        id="scheduling-shared",
    ),
    pytest.param(
        ring(constraints={"shards": 0}),
        "constraints.invalid_shards",
        "$.constraints.shards",
        id="zero-shards",
    ),
    pytest.param(
        ring(constraints={"shards": 10**5000, "ordering": "none"}),
        "constraints.invalid_shards",
        "$.constraints.shards",
        id="huge-shards",
    ),
    pytest.param(
        ring(constraints={"ordering": "fifo"}),
        "constraints.unknown_ordering",
        "$.constraints.ordering",
        id="unknown-ordering",
    ),
    pytest.param(
        ring(constraints={"shards": 2, "ordering": "strict"}),
        "constraints.strict_requires_single_shard",
        "$.constraints.shards",
        id="strict-two-shards",
    ),
    pytest.param(
        ring(constraints={"shards": 2}),
        "constraints.strict_requires_single_shard",
        "$.constraints.shards",
        id="default-strict-two-shards",
    ),
    pytest.param(
        ring(constraints={"shards": 4, "ordering": "per_key"}),
        "constraints.per_key_requires_shard_key",
        "$.constraints.shard_key",
        id="per-key-without-key",
    ),
    pytest.param(
        ring(constraints={"ordering": "per_key", "shard_key": None}),
        "constraints.per_key_requires_shard_key",
        "$.constraints.shard_key",
        id="per-key-null-key",
    ),
    pytest.param(
        ring(constraints={"ordering": "strict", "shard_key": "account"}),
        "constraints.shard_key_unused",
        "$.constraints.shard_key",
        id="shard-key-unused",
    ),
    pytest.param(graph(lanes=[]), "lane_graph.no_lanes", "$.lanes", id="no-lanes"),
    pytest.param(graph(roles=[]), "lane_graph.no_roles", "$.roles", id="no-roles"),
    pytest.param(
        graph(lanes=[lane(f"l{i}") for i in range(257)]),
        "lane_graph.too_many_lanes",
        "$.lanes",
        id="too-many-lanes",
    ),
    pytest.param(
        graph(roles=[role(f"r{i}", "stage", ["in"], []) for i in range(257)]),
        "lane_graph.too_many_roles",
        "$.roles",
        id="too-many-roles",
    ),
    pytest.param(
        graph(roles=[role("r", "stage", ["in"] * 65, [])]),
        "lane_graph.too_many_lane_refs",
        "$.roles[0].inputs",
        id="too-many-lane-refs",
    ),
    pytest.param(
        graph(lanes=[lane("in"), lane("in")]),
        "lane_graph.duplicate_lane_name",
        "$.lanes[1].name",
        id="duplicate-lane",
    ),
    pytest.param(
        graph(roles=[role("r", "stage", ["in"], []), role("r", "stage", [], ["out"])]),
        "lane_graph.duplicate_role_name",
        "$.roles[1].name",
        id="duplicate-role",
    ),
    pytest.param(
        graph(lanes=[lane("in", "Queue"), lane("out")]),
        "lane_graph.unknown_lane_kind",
        "$.lanes[0].kind",
        id="unknown-lane-kind",
    ),
    pytest.param(
        graph(lanes=[lane("in", on_full="Spin"), lane("out")]),
        "lane_graph.unknown_on_full",
        "$.lanes[0].on_full",
        id="unknown-on-full",
    ),
    pytest.param(
        graph(lanes=[lane("in", capacity=1000), lane("out")]),
        "lane_graph.invalid_capacity",
        "$.lanes[0].capacity",
        id="capacity-not-power-of-two",
    ),
    pytest.param(
        graph(lanes=[lane("in", capacity=1), lane("out", capacity=1 << 25)]),
        "lane_graph.invalid_capacity",
        "$.lanes[1].capacity",
        id="capacity-out-of-range",
    ),
    pytest.param(
        graph(roles=[role("r", "actor", ["in"], ["out"])]),
        "lane_graph.unknown_role_kind",
        "$.roles[0].kind",
        id="unknown-role-kind",
    ),
    pytest.param(
        graph(roles=[role("r", "stage", ["in"], ["nowhere"])]),
        "lane_graph.unresolved_lane",
        "$.roles[0].outputs[0]",
        id="unresolved-output",
    ),
    pytest.param(
        graph(roles=[role("r", "merge", ["in", "x" * 100000], ["out"])]),
        "lane_graph.unresolved_lane",
        "$.roles[0].inputs[1]",
        id="unresolved-huge-input",
    ),
    pytest.param(
        graph(roles=[role("r", "stage", ["in", "in"], ["out"])]),
        "lane_graph.duplicate_lane_ref",
        "$.roles[0].inputs[1]",
        id="duplicate-lane-ref",
    ),
    pytest.param(
        graph(roles=[role("r", "bridge", ["in"], [])]),
        "lane_graph.bad_arity",
        "$.roles[0]",
        id="bridge-no-output",
    ),
    pytest.param(
        graph(lanes=LANES_ABC, roles=[role("r", "router", ["a"], ["b"])]),
        "lane_graph.bad_arity",
        "$.roles[0]",
        id="router-one-output",
    ),
    pytest.param(
        graph(lanes=LANES_ABC, roles=[role("r", "merge", ["a"], ["b", "c"])]),
        "lane_graph.bad_arity",
        "$.roles[0]",
        id="merge-one-input",
    ),
    pytest.param(
        graph(roles=[role("r", "stage", [], [])]),
        "lane_graph.bad_arity",
        "$.roles[0]",
        id="stage-no-lanes",
    ),
    pytest.param(
        graph(roles=[role("r", "stage", ["in"], ["out"]), role("back", "bridge", ["out"], ["in"])]),
        "lane_graph.cycle",
        "$.roles[0]",
        id="lane-cycle",
    ),
    pytest.param(
        graph(roles=[role("loop", "stage", ["in"], ["in", "out"])]),
        "lane_graph.cycle",
        "$.roles[0]",
        id="role-writes-its-input",
    ),
    pytest.param(
        graph(lanes=[*LANE_GRAPH["lanes"], lane("spare")]),
        "lane_graph.unused_lane",
        "$.lanes[2]",
        id="unused-lane",
    ),
]


@pytest.mark.parametrize(("raw", "code", "path"), INVALID)
def test_invalid_plan_reports_code_at_path(raw: object, code: str, path: str) -> None:
    plan, diagnostics = validate_plan(raw)
    assert any(d.code == code and d.path == path for d in diagnostics), diagnostics
    assert all(d.code in DIAGNOSTIC_CODES for d in diagnostics)
    assert len(diagnostics) <= MAX_DIAGNOSTICS
    assert all(len(d.message) < 1000 for d in diagnostics)
    msgspec.json.encode(diagnostics)  # messages are always encodable, whatever the input held
    result = compile_plan(raw)
    if code in WARNINGS:
        assert plan is not None
        assert result.ok
        assert {(d.code, d.severity) for d in diagnostics} == {(code, "warning")}
    else:
        assert plan is None
        assert not result.ok
        assert (result.spec_kv, result.spec_hash) == (None, None)
    assert result.diagnostics == diagnostics


def test_every_code_is_covered() -> None:
    covered = {param.values[1] for param in INVALID} | {"spec_kv.unparseable"}
    assert covered == set(DIAGNOSTIC_CODES)


def test_all_problems_are_reported_together() -> None:
    raw = {
        "name": "Bad Name",
        "target": "SingleRing",
        "stages": [
            {"id": "a", "depends_on": [1]},
            {"id": "b", "depends_on": [0]},
            {"id": "a", "depends_on": [1, 1]},
            {"id": "d", "colour": "red"},
            {"id": "e"},
        ],
        "constraints": {"shards": 0, "ordering": "per_key"},
        "single_ring": {"producer": "mpmc", "scheduling": "shared"},
        "roles": [],
    }
    _, diagnostics = validate_plan(raw)
    found = {(d.code, d.path) for d in diagnostics}
    assert found >= {
        ("plan.invalid_name", "$.name"),
        ("plan.field_not_for_target", "$.roles"),
        ("single_ring.too_many_stages", "$.stages"),
        ("single_ring.forward_dependency", "$.stages[0].depends_on[0]"),
        ("single_ring.dependency_cycle", "$.stages[0]"),
        ("single_ring.duplicate_stage_id", "$.stages[2].id"),
        ("single_ring.depends_on_not_increasing", "$.stages[2].depends_on[1]"),
        ("plan.unknown_field", "$.stages[3].colour"),
        ("constraints.invalid_shards", "$.constraints.shards"),
        ("constraints.per_key_requires_shard_key", "$.constraints.shard_key"),
        ("single_ring.unsupported_producer", "$.single_ring.producer"),
        ("single_ring.unsupported_scheduling", "$.single_ring.scheduling"),
    }


def test_unknown_target_still_checks_sections() -> None:
    _, diagnostics = validate_plan({"name": "x", "target": 3, "stages": [{"id": 1}], "lanes": []})
    assert {(d.code, d.path) for d in diagnostics} == {
        ("plan.wrong_type", "$.target"),
        ("plan.wrong_type", "$.stages[0].id"),
        ("lane_graph.no_lanes", "$.lanes"),
    }


# --- hostile input ---------------------------------------------------------------------------


def nested(depth: int, *, mapping: bool = False) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = {"a": value} if mapping else [value]
    return value


def test_ten_thousand_stages() -> None:
    raw = ring(stages=[{"id": f"s{i}", "depends_on": [i - 1] if i else []} for i in range(10_000)])
    _, diagnostics = validate_plan(raw)
    assert [(d.code, d.path) for d in diagnostics] == [("single_ring.too_many_stages", "$.stages")]
    assert "10000" in diagnostics[0].message


def test_ten_thousand_broken_stages_are_truncated() -> None:
    raw = ring(stages=[{"id": i, "depends_on": [i, "x"], "junk": i} for i in range(10_000)])
    _, diagnostics = validate_plan(raw)
    assert len(diagnostics) == MAX_DIAGNOSTICS
    assert diagnostics[-1] == Diagnostic(
        code="plan.diagnostics_truncated",
        path="$",
        message=f"too many problems; only the first {MAX_DIAGNOSTICS - 1} are reported",
    )


@pytest.mark.parametrize("mapping", [False, True], ids=["lists", "objects"])
def test_deeply_nested_values(mapping: bool) -> None:
    deep = nested(100_000, mapping=mapping)
    candidates: list[object] = [
        deep,
        ring(name=deep),
        ring(target=deep),
        ring(stages=deep),
        ring(stages=[deep]),
        ring(stages=[{"id": deep, "depends_on": deep}]),
        ring(stages=[{"id": "a", "depends_on": [deep]}]),
        ring(constraints=deep),
        ring(constraints={"shards": deep, "ordering": deep, "shard_key": deep}),
        ring(single_ring={"producer": deep}),
        ring(unknown=deep),
        graph(lanes=[deep, {"name": deep, "kind": deep, "on_full": deep, "capacity": deep}]),
        graph(roles=[deep, {"name": "r", "kind": deep, "inputs": deep, "outputs": [deep]}]),
    ]
    for raw in candidates:
        _, diagnostics = validate_plan(raw)
        assert diagnostics
        assert any(d.severity == "error" for d in diagnostics)
        assert not compile_plan(raw).ok


def test_huge_and_odd_values_stay_readable() -> None:
    big = "x" * 1_000_000
    raw = {
        "name": big,
        "target": big,
        big: 1,
        None: 2,
        (1, (2, (3,))): 3,
        frozenset({1}): 4,
        "stages": [{"id": big, "depends_on": [10**5000, -(10**5000)]}, {"id": b"bytes"}],
        "constraints": {"shards": 1e308, "ordering": float("nan"), "shard_key": "\udcff"},
        "lanes": [{"name": "l", "kind": "Events", "on_full": "Block", "capacity": 10**5000}],
    }
    _, diagnostics = validate_plan(raw)
    assert len(diagnostics) > 10
    assert all(len(d.message) < 1000 and len(d.path) < 200 for d in diagnostics)
    msgspec.json.encode(diagnostics)
    messages = " ".join(d.message for d in diagnostics)
    assert "a huge integer" in messages
    assert "a Python bytes" in messages
