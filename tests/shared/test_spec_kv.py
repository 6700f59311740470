"""The spec.kv text format: parsing canonical text back, rejecting everything else."""

from __future__ import annotations

import pytest

from shared.spec import (
    Diagnostic,
    SpecParseError,
    compile_plan,
    escape_value,
    lower_plan,
    parse_spec_kv,
    validate_plan,
    validate_spec_kv,
)
from tests.shared.test_spec import LANE_GRAPH, SINGLE_RING, SINGLE_RING_KV, ring


def test_parse_golden_text() -> None:
    plan, _ = validate_plan(SINGLE_RING)
    assert parse_spec_kv(SINGLE_RING_KV) == plan
    assert validate_spec_kv(SINGLE_RING_KV) == []


def test_lane_graph_round_trip() -> None:
    text = compile_plan(LANE_GRAPH).spec_kv
    assert text is not None
    assert lower_plan(parse_spec_kv(text)) == text
    assert validate_spec_kv(text) == []


def test_values_are_escaped() -> None:
    raw = ring(
        stages=[{"id": "a=b\\n"}, {"id": "c\\", "depends_on": [0]}],
        constraints={"ordering": "per_key", "shards": 2, "shard_key": "k=v"},
    )
    text = compile_plan(raw).spec_kv
    assert text is not None
    assert "pipeline.stages.0.id=a=b\\\\n\n" in text
    assert "pipeline.stages.1.id=c\\\\\n" in text
    assert "pipeline.constraints.shard_key=k=v\n" in text
    plan = parse_spec_kv(text)
    assert [stage.id for stage in plan.stages] == ["a=b\\n", "c\\"]
    assert plan.constraints is not None
    assert plan.constraints.shard_key == "k=v"


def test_escape_value() -> None:
    assert escape_value("a\\b\nc\rd=e") == "a\\\\b\\nc\\rd=e"


def test_empty_lists_round_trip() -> None:
    plan = parse_spec_kv(SINGLE_RING_KV)
    assert plan.stages[0].depends_on == ()
    assert "pipeline.stages.0.depends_on.count=0\n" in SINGLE_RING_KV


LINES = SINGLE_RING_KV.splitlines(keepends=True)


def without(index: int) -> str:
    return "".join(LINES[:index] + LINES[index + 1 :])


def replaced(old: str, new: str) -> str:
    assert old in SINGLE_RING_KV
    return SINGLE_RING_KV.replace(old, new, 1)


BAD_TEXTS = [
    pytest.param("", "empty", id="empty"),
    pytest.param("garbage", "newline", id="garbage"),
    pytest.param("garbage\n", "expected key=value", id="garbage-line"),
    pytest.param(SINGLE_RING_KV[:-1], "end with a newline", id="no-trailing-newline"),
    pytest.param(SINGLE_RING_KV.replace("\n", "\r\n"), "line endings", id="crlf"),
    pytest.param(SINGLE_RING_KV + "\n", "expected key=value", id="blank-line"),
    pytest.param(SINGLE_RING_KV + LINES[1], "duplicate key 'pipeline.name'", id="duplicate"),
    pytest.param(SINGLE_RING_KV + "pipeline.colour=red\n", "unknown key", id="unknown-key"),
    pytest.param(SINGLE_RING_KV + "pipeline.lanes.count=0\n", "unknown key", id="other-target"),
    pytest.param(without(0), "missing key 'spec.version'", id="no-version"),
    pytest.param(without(14), "missing key 'pipeline.constraints.shard_key'", id="missing-key"),
    pytest.param(without(9), "missing key 'pipeline.stages.2.id'", id="missing-stage"),
    pytest.param(
        "".join([LINES[0], LINES[2], LINES[1], *LINES[3:]]), "canonical order", id="reordered"
    ),
    pytest.param(replaced("spec.version=1", "spec.version=2"), "spec.version", id="version-2"),
    pytest.param(replaced("shards=1", "shards=01"), "decimal integer", id="leading-zero"),
    pytest.param(replaced("shards=1", "shards=+1"), "decimal integer", id="plus-sign"),
    pytest.param(replaced("shards=1", "shards=1.0"), "decimal integer", id="float"),
    pytest.param(replaced("shards=1", "shards= 1"), "decimal integer", id="space"),
    pytest.param(replaced("shards=1", "shards=" + "9" * 40), "decimal integer", id="huge-int"),
    pytest.param(replaced("stages.count=3", "stages.count=4"), "missing key", id="count-too-big"),
    pytest.param(replaced("stages.count=3", "stages.count=2"), "unknown key", id="count-small"),
    pytest.param(replaced("stages.count=3", "stages.count=-1"), "out of range", id="negative"),
    pytest.param(replaced("id=decode", "id=de\\code"), "bad escape", id="bad-escape"),
    pytest.param(replaced("id=decode", "id=decode\\"), "bad escape", id="trailing-backslash"),
    pytest.param(replaced("pipeline.name", "Pipeline.Name"), "malformed key", id="key-case"),
    pytest.param(replaced("pipeline.name", "pipeline.name "), "malformed key", id="key-space"),
    pytest.param(replaced("stages.0.id", "stages.00.id"), "malformed key", id="index-zero"),
    pytest.param(replaced("=SingleRing", "=MultiRing"), "SingleRing or LaneGraph", id="target"),
    pytest.param(
        replaced("producer=single", "producer=mpmc"),
        "single_ring.unsupported_producer",
        id="invalid-plan",
    ),
    pytest.param(
        replaced("depends_on.0=0", "depends_on.0=1"),
        "single_ring.self_dependency",
        id="self-dependency",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_TEXTS)
def test_parse_rejects(text: str, message: str) -> None:
    with pytest.raises(SpecParseError) as info:
        parse_spec_kv(text)
    assert message in str(info.value)
    diagnostics = validate_spec_kv(text)
    assert diagnostics
    assert all(d.severity == "error" for d in diagnostics)


def test_validate_spec_kv_unparseable() -> None:
    assert validate_spec_kv("garbage\n") == [
        Diagnostic(code="spec_kv.unparseable", path="$", message="line 1: expected key=value")
    ]


def test_validate_spec_kv_reports_plan_diagnostics() -> None:
    text = SINGLE_RING_KV.replace("producer=single", "producer=mpmc")
    assert [(d.code, d.path) for d in validate_spec_kv(text)] == [
        ("single_ring.unsupported_producer", "$.single_ring.producer")
    ]


def test_warnings_survive_the_round_trip() -> None:
    text = SINGLE_RING_KV.replace("shard_key=\n", "shard_key=account\n")
    plan = parse_spec_kv(text)
    assert plan.constraints is not None
    assert plan.constraints.shard_key == "account"
    assert [d.code for d in validate_spec_kv(text)] == ["constraints.shard_key_unused"]


def test_spec_parse_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        parse_spec_kv("")
