"""Validation of an authored plan: the top level, dispatching to the per-target checks."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final, get_args

from shared.spec._check import MISSING, Sink, check_choice, check_object, member, show, type_name
from shared.spec._lanes import validate_lane_graph
from shared.spec._model import Diagnostic, PipelinePlan, Target
from shared.spec._ring import validate_constraints, validate_options, validate_stages

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["validate_plan"]

_NAME: Final = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_SINGLE_RING_FIELDS: Final = ("stages", "constraints", "single_ring")
_LANE_GRAPH_FIELDS: Final = ("lanes", "roles")
_PLAN_FIELDS: Final = ("name", "target", *_SINGLE_RING_FIELDS, *_LANE_GRAPH_FIELDS)
_TARGETS: Final[dict[str, Target]] = {target: target for target in get_args(Target)}


def validate_plan(raw: object) -> tuple[PipelinePlan | None, list[Diagnostic]]:
    """Validate an authored plan and normalise it (fill in every default).

    All problems are reported, not just the first, up to ``MAX_DIAGNOSTICS`` diagnostics (the last
    one is then ``plan.diagnostics_truncated``). Never raises, whatever ``raw`` is.

    Args:
        raw: The plan as decoded JSON (dict, list, str, int, float, bool and None values).

    Returns:
        The normalised plan, or ``None`` when there is an error-severity diagnostic; and all
        diagnostics (warnings included) in document order.
    """
    sink = Sink()
    plan = _validate(sink, raw)
    return (None if sink.has_errors else plan), sink.items


def _validate(sink: Sink, raw: object) -> PipelinePlan | None:
    fields = check_object(sink, raw, "$", _PLAN_FIELDS, "a pipeline plan")
    if fields is None:
        return None
    name = _name(sink, fields.get("name", MISSING))
    target = check_choice(
        sink, fields, "$", "target", _TARGETS, code="plan.unknown_target", default=None
    )
    if target == "SingleRing":
        _misplaced(sink, fields, _LANE_GRAPH_FIELDS, target)
        stages = validate_stages(sink, fields.get("stages", MISSING), required=True)
        constraints = validate_constraints(sink, fields.get("constraints", MISSING))
        options = validate_options(sink, fields.get("single_ring", MISSING))
        if name is None:
            return None
        return PipelinePlan(
            name=name, target=target, stages=stages, constraints=constraints, single_ring=options
        )
    if target == "LaneGraph":
        _misplaced(sink, fields, _SINGLE_RING_FIELDS, target)
        lanes, roles = validate_lane_graph(sink, fields, required=True)
        if name is None:
            return None
        return PipelinePlan(name=name, target=target, lanes=lanes, roles=roles)
    # Without a usable target, still check whichever sections are present.
    validate_stages(sink, fields.get("stages", MISSING), required=False)
    validate_constraints(sink, fields.get("constraints", MISSING))
    validate_options(sink, fields.get("single_ring", MISSING))
    validate_lane_graph(sink, fields, required=False)
    return None


def _name(sink: Sink, value: object) -> str | None:
    if value is MISSING:
        sink.error("plan.missing_field", "$.name", "name is required")
        return None
    if not isinstance(value, str):
        sink.error("plan.wrong_type", "$.name", f"name must be a string, got {type_name(value)}")
        return None
    if len(value) > 64 or not _NAME.fullmatch(value):
        sink.error(
            "plan.invalid_name",
            "$.name",
            f"name {show(value)} must match ^[a-z0-9][a-z0-9_.-]{{0,63}}$ (1-64 characters: "
            "lower-case letters, digits, '_', '.', '-', starting with a letter or digit)",
        )
        return None
    return value


def _misplaced(
    sink: Sink, fields: Mapping[str, object], keys: tuple[str, ...], target: str
) -> None:
    other = "LaneGraph" if target == "SingleRing" else "SingleRing"
    for key in keys:
        if key in fields:
            sink.error(
                "plan.field_not_for_target",
                member("$", key),
                f"{key} belongs to {other} plans, but this plan's target is {target}",
            )
