"""Property tests of the spec compiler: determinism, round trips, and never raising."""

from __future__ import annotations

import json
import random
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.spec import (
    DEFAULT_CAPACITY,
    MAX_DIAGNOSTICS,
    SpecParseError,
    compile_plan,
    lower_plan,
    parse_spec_kv,
    validate_plan,
    validate_spec_kv,
)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
NAMES = st.builds(str.__add__, st.sampled_from(LOWER), st.text(LOWER + "_.-", max_size=20))
IDENTIFIERS = st.one_of(
    st.text(LOWER + "_", min_size=1, max_size=8),
    st.text(
        st.characters(exclude_categories=("Cc", "Cs"), include_characters="\\= "),
        min_size=1,
        max_size=64,
    ).filter(lambda s: not s[0].isspace() and not s[-1].isspace()),
)
LANE_KINDS = st.sampled_from(["Events", "Journal", "SequencedSlots", "FanoutBroadcast"])
ON_FULL = st.sampled_from(["Block", "Drop"])

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=80)
    | st.sampled_from(["SingleRing", "LaneGraph", "strict", "per_key", "Events", "in", "out"])
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=15,
)
#: Small junk for the values of otherwise well-shaped plans.
JUNK = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=4,
)


@st.composite
def single_ring_plans(draw: st.DrawFn) -> dict[str, Any]:
    ids = draw(st.lists(IDENTIFIERS, min_size=1, max_size=4, unique=True))
    stages: list[dict[str, Any]] = []
    for i, stage_id in enumerate(ids):
        deps = sorted(draw(st.sets(st.integers(0, i - 1), max_size=i))) if i else []
        stage: dict[str, Any] = {"id": stage_id}
        explicit = draw(st.booleans())
        if deps or explicit:
            stage["depends_on"] = deps
        stages.append(stage)
    plan: dict[str, Any] = {"name": draw(NAMES), "target": "SingleRing", "stages": stages}
    ordering = draw(st.sampled_from([None, "strict", "per_key", "none"]))
    constraints: dict[str, Any] = {} if ordering is None else {"ordering": ordering}
    if ordering in ("per_key", "none"):
        constraints["shards"] = draw(st.integers(1, 1024))
    elif draw(st.booleans()):
        constraints["shards"] = 1
    if ordering == "per_key" or (ordering == "none" and draw(st.booleans())):
        constraints["shard_key"] = draw(IDENTIFIERS)
    elif draw(st.booleans()):
        constraints["shard_key"] = None
    explicit = draw(st.booleans())
    if constraints or explicit:
        plan["constraints"] = constraints
    options = draw(
        st.fixed_dictionaries(
            {}, optional={"producer": st.just("single"), "scheduling": st.just("dedicated")}
        )
    )
    explicit = draw(st.booleans())
    if options or explicit:
        plan["single_ring"] = options
    return plan


@st.composite
def lane_graph_plans(draw: st.DrawFn) -> dict[str, Any]:
    """Roles read lanes before a split point and write lanes after it, so the graph is acyclic."""
    names = draw(st.lists(IDENTIFIERS, min_size=2, max_size=6, unique=True))
    lanes: list[dict[str, Any]] = []
    for name in names:
        lane = {"name": name, "kind": draw(LANE_KINDS), "on_full": draw(ON_FULL)}
        if draw(st.booleans()):
            lane["capacity"] = 2 ** draw(st.integers(1, 24))
        lanes.append(lane)
    roles: list[dict[str, Any]] = []
    for role_name in draw(st.lists(IDENTIFIERS, min_size=1, max_size=5, unique=True)):
        split = draw(st.integers(1, len(names) - 1))
        low, high = names[:split], names[split:]
        kind = draw(st.sampled_from(["stage", "bridge", "router", "merge"]))
        if kind == "router" and len(high) >= 2:
            inputs = [draw(st.sampled_from(low))]
            outputs = draw(st.lists(st.sampled_from(high), min_size=2, unique=True))
        elif kind == "merge" and len(low) >= 2:
            inputs = draw(st.lists(st.sampled_from(low), min_size=2, unique=True))
            outputs = [draw(st.sampled_from(high))]
        elif kind == "bridge":
            inputs, outputs = [draw(st.sampled_from(low))], [draw(st.sampled_from(high))]
        else:
            kind = "stage"
            inputs = draw(st.lists(st.sampled_from(low), min_size=1, unique=True))
            outputs = draw(st.lists(st.sampled_from(high), unique=True))
        role: dict[str, Any] = {"name": role_name, "kind": kind}
        explicit_inputs, explicit_outputs = draw(st.booleans()), draw(st.booleans())
        if inputs or explicit_inputs:
            role["inputs"] = inputs
        if outputs or explicit_outputs:
            role["outputs"] = outputs
        roles.append(role)
    return {"name": draw(NAMES), "target": "LaneGraph", "lanes": lanes, "roles": roles}


VALID_PLANS = st.one_of(single_ring_plans(), lane_graph_plans())


def with_defaults(plan: dict[str, Any]) -> dict[str, Any]:
    """The same plan with every default written out."""
    full: dict[str, Any] = json.loads(json.dumps(plan))
    if full["target"] == "SingleRing":
        for stage in full["stages"]:
            stage.setdefault("depends_on", [])
        constraints = full.setdefault("constraints", {})
        constraints.setdefault("shards", 1)
        constraints.setdefault("ordering", "strict")
        constraints.setdefault("shard_key", None)
        options = full.setdefault("single_ring", {})
        options.setdefault("producer", "single")
        options.setdefault("scheduling", "dedicated")
    else:
        for lane in full["lanes"]:
            lane.setdefault("capacity", DEFAULT_CAPACITY)
        for role in full["roles"]:
            role.setdefault("inputs", [])
            role.setdefault("outputs", [])
    return full


def shuffled(value: Any, rng: random.Random) -> Any:
    """Reorder the keys of every object (lists keep their order: it is meaningful)."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {key: shuffled(value[key], rng) for key in keys}
    if isinstance(value, list):
        return [shuffled(item, rng) for item in value]
    return value


@PROPERTY
@given(
    plan=VALID_PLANS, rng=st.randoms(use_true_random=False), indent=st.sampled_from([None, 0, 2])
)
def test_equal_plans_compile_to_identical_text(
    plan: dict[str, Any], rng: random.Random, indent: int | None
) -> None:
    result = compile_plan(plan)
    assert result.ok, result.diagnostics
    assert all(d.severity == "warning" for d in result.diagnostics)
    reserialised = json.loads(json.dumps(shuffled(plan, rng), indent=indent))
    for variant in (reserialised, with_defaults(plan), shuffled(with_defaults(plan), rng)):
        again = compile_plan(variant)
        assert (again.spec_kv, again.spec_hash) == (result.spec_kv, result.spec_hash)


@PROPERTY
@given(plan=VALID_PLANS)
def test_round_trip(plan: dict[str, Any]) -> None:
    normalised, _ = validate_plan(plan)
    assert normalised is not None
    text = lower_plan(normalised)
    parsed = parse_spec_kv(text)
    assert parsed == normalised
    assert lower_plan(parsed) == text
    assert not [d for d in validate_spec_kv(text) if d.severity == "error"]
    # The normalised plan is itself a valid authored plan that compiles to the same text.
    assert compile_plan(msgspec.json.decode(msgspec.json.encode(normalised))).spec_kv == text


@PROPERTY
@given(plan=VALID_PLANS, data=st.data())
def test_any_edit_of_canonical_text_is_rejected(plan: dict[str, Any], data: st.DataObject) -> None:
    text = compile_plan(plan).spec_kv
    assert text is not None
    lines = text.splitlines(keepends=True)
    i = data.draw(st.integers(0, len(lines) - 1))
    j = data.draw(st.integers(0, len(lines) - 1).filter(lambda j: lines[j] != lines[i]))
    swapped = list(lines)
    swapped[i], swapped[j] = lines[j], lines[i]
    for edited in (lines[:i] + lines[i + 1 :], [*lines, lines[i]], swapped):
        with pytest.raises(SpecParseError):
            parse_spec_kv("".join(edited))
        assert [d.code for d in validate_spec_kv("".join(edited))] == ["spec_kv.unparseable"]


def check_never_raises(raw: object) -> None:
    plan, diagnostics = validate_plan(raw)
    assert len(diagnostics) <= MAX_DIAGNOSTICS
    assert (plan is None) == any(d.severity == "error" for d in diagnostics)
    result = compile_plan(raw)
    assert result.ok == (plan is not None)
    assert result.diagnostics == diagnostics
    msgspec.json.encode(result)


@PROPERTY
@given(raw=JSON)
def test_arbitrary_json_never_raises(raw: object) -> None:
    check_never_raises(raw)


STAGE_LIKE = st.dictionaries(st.sampled_from(["id", "depends_on", "x"]), JUNK, max_size=3)
LANE_LIKE = st.dictionaries(st.sampled_from(["name", "kind", "on_full", "capacity"]), JUNK)
ROLE_LIKE = st.dictionaries(
    st.sampled_from(["name", "kind", "inputs", "outputs"]),
    JUNK | st.lists(st.sampled_from(["in", "out", "x"]), max_size=4),
)
JUNK_PLANS = st.fixed_dictionaries(
    {},
    optional={
        "name": NAMES | JUNK,
        "target": st.sampled_from(["SingleRing", "LaneGraph"]) | JUNK,
        "stages": st.lists(STAGE_LIKE, max_size=6) | JUNK,
        "constraints": st.dictionaries(
            st.sampled_from(["shards", "ordering", "shard_key"]), JUNK | st.integers(-2, 5)
        )
        | JUNK,
        "single_ring": st.dictionaries(st.sampled_from(["producer", "scheduling"]), JUNK) | JUNK,
        "lanes": st.lists(LANE_LIKE, max_size=5) | JUNK,
        "roles": st.lists(ROLE_LIKE, max_size=5) | JUNK,
    },
)


@PROPERTY
@given(raw=JUNK_PLANS)
def test_junk_plans_never_raise(raw: dict[str, Any]) -> None:
    check_never_raises(raw)


KV_LINES = st.lists(
    st.tuples(
        st.sampled_from(
            ["spec.version", "pipeline.name", "pipeline.target", "pipeline.stages.count"]
        )
        | st.text(max_size=20),
        st.sampled_from(["1", "0", "SingleRing", "LaneGraph", "x", "\\", "\\n"])
        | st.text(max_size=20),
    ),
    max_size=12,
)


@PROPERTY
@given(lines=KV_LINES, newline=st.booleans())
def test_arbitrary_text_only_raises_spec_parse_error(
    lines: list[tuple[str, str]], newline: bool
) -> None:
    text = "\n".join(f"{key}={value}" for key, value in lines) + ("\n" if newline else "")
    try:
        plan = parse_spec_kv(text)
    except SpecParseError:
        assert [d for d in validate_spec_kv(text) if d.severity == "error"]
    else:
        assert lower_plan(plan) == text
