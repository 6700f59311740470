"""Parsing canonical spec.kv text back into a plan (the agent's re-check).

Non-canonical text is rejected, never canonicalised: keys must appear exactly once, in the
canonical order, with canonical values (decimal integers without ``+`` or leading zeros, only
the escapes ``\\\\``, ``\\n`` and ``\\r``), and the text must end with a newline. The keys
are read into a plan-shaped dict that goes through ``validate_plan``, so text and JSON plans
obey the very same rules.
"""

from __future__ import annotations

import re
from typing import Final

from shared.spec._lower import lower_plan
from shared.spec._model import SPEC_VERSION, Diagnostic, PipelinePlan
from shared.spec._validate import validate_plan

__all__ = ["SpecParseError", "parse_spec_kv", "validate_spec_kv"]

#: More lines than the largest valid plan could ever need.
_MAX_LINES: Final = 50_000
_KEY: Final = re.compile(r"[a-z_]+(?:\.(?:[a-z_]+|0|[1-9][0-9]{0,5}))*")
_INT: Final = re.compile(r"0|-?[1-9][0-9]{0,17}")
_ESCAPE: Final = re.compile(r"\\(.?)", re.DOTALL)
_UNESCAPED: Final = {"\\": "\\", "n": "\n", "r": "\r"}


class SpecParseError(ValueError):
    """spec.kv text is malformed, not canonical, or describes an invalid plan."""


class _Lines:
    """The ``key=value`` lines of a text, taken one key at a time in canonical order."""

    def __init__(self, text: str) -> None:
        if not text:
            raise SpecParseError("spec.kv text is empty")
        if not text.endswith("\n"):
            raise SpecParseError("spec.kv text must end with a newline")
        if "\r" in text:
            raise SpecParseError("spec.kv text must use \\n line endings (found a \\r)")
        if text.count("\n") > _MAX_LINES:
            raise SpecParseError(f"spec.kv text has more than {_MAX_LINES} lines")
        self._values: dict[str, tuple[int, str]] = {}
        self._keys: list[str] = []
        for number, line in enumerate(text[:-1].split("\n"), start=1):
            key, equals, value = line.partition("=")
            if not equals:
                raise SpecParseError(f"line {number}: expected key=value")
            if len(key) > 128 or not _KEY.fullmatch(key):
                raise SpecParseError(f"line {number}: malformed key {key[:128]!r}")
            if key in self._values:
                first = self._values[key][0]
                raise SpecParseError(
                    f"line {number}: duplicate key {key!r} (first on line {first})"
                )
            self._values[key] = (number, value)
            self._keys.append(key)
        self._taken: list[str] = []

    def raw(self, key: str) -> str:
        entry = self._values.get(key)
        if entry is None:
            raise SpecParseError(f"missing key {key!r}")
        self._taken.append(key)
        return entry[1]

    def string(self, key: str) -> str:
        def unescape(match: re.Match[str]) -> str:
            replacement = _UNESCAPED.get(match.group(1))
            if replacement is None:
                number = self._values[key][0]
                raise SpecParseError(f"line {number}: bad escape {match.group(0)!r} in {key!r}")
            return replacement

        return _ESCAPE.sub(unescape, self.raw(key))

    def integer(self, key: str) -> int:
        value = self.raw(key)
        if not _INT.fullmatch(value):
            number = self._values[key][0]
            raise SpecParseError(f"line {number}: {key!r} must be a decimal integer")
        return int(value)

    def count(self, key: str) -> int:
        value = self.integer(key)
        if not 0 <= value <= _MAX_LINES:
            raise SpecParseError(f"line {self._values[key][0]}: {key!r} is out of range")
        return value

    def strings(self, prefix: str) -> list[str]:
        return [self.string(f"{prefix}.{j}") for j in range(self.count(f"{prefix}.count"))]

    def finish(self) -> None:
        """Refuse keys that were never read, and keys out of canonical order."""
        if len(self._taken) != len(self._keys):
            taken = set(self._taken)
            key = next(key for key in self._keys if key not in taken)
            raise SpecParseError(f"line {self._values[key][0]}: unknown key {key!r}")
        for number, (key, expected) in enumerate(zip(self._keys, self._taken, strict=True), 1):
            if key != expected:
                raise SpecParseError(
                    f"line {number}: key {key!r} is out of canonical order (expected {expected!r})"
                )


def _read(text: str) -> dict[str, object]:
    """Read spec.kv text into a plan-shaped dict, checking syntax and canonical key order."""
    lines = _Lines(text)
    if lines.raw("spec.version") != str(SPEC_VERSION):
        raise SpecParseError(f"unsupported spec.version (this code reads version {SPEC_VERSION})")
    plan: dict[str, object] = {
        "name": lines.string("pipeline.name"),
        "target": lines.string("pipeline.target"),
    }
    if plan["target"] == "SingleRing":
        plan["stages"] = [
            {
                "id": lines.string(f"pipeline.stages.{i}.id"),
                "depends_on": [
                    lines.integer(f"pipeline.stages.{i}.depends_on.{j}")
                    for j in range(lines.count(f"pipeline.stages.{i}.depends_on.count"))
                ],
            }
            for i in range(lines.count("pipeline.stages.count"))
        ]
        plan["constraints"] = {  # evaluated in order, which is the canonical order
            "shards": lines.integer("pipeline.constraints.shards"),
            "ordering": lines.string("pipeline.constraints.ordering"),
            "shard_key": lines.string("pipeline.constraints.shard_key") or None,
        }
        plan["single_ring"] = {
            "producer": lines.string("pipeline.single_ring.producer"),
            "scheduling": lines.string("pipeline.single_ring.scheduling"),
        }
    elif plan["target"] == "LaneGraph":
        plan["lanes"] = [
            {
                "name": lines.string(f"pipeline.lanes.{i}.name"),
                "kind": lines.string(f"pipeline.lanes.{i}.kind"),
                "on_full": lines.string(f"pipeline.lanes.{i}.on_full"),
                "capacity": lines.integer(f"pipeline.lanes.{i}.capacity"),
            }
            for i in range(lines.count("pipeline.lanes.count"))
        ]
        plan["roles"] = [
            {
                "name": lines.string(f"pipeline.roles.{i}.name"),
                "kind": lines.string(f"pipeline.roles.{i}.kind"),
                "inputs": lines.strings(f"pipeline.roles.{i}.inputs"),
                "outputs": lines.strings(f"pipeline.roles.{i}.outputs"),
            }
            for i in range(lines.count("pipeline.roles.count"))
        ]
    else:
        raise SpecParseError("pipeline.target must be SingleRing or LaneGraph")
    lines.finish()
    return plan


def parse_spec_kv(text: str) -> PipelinePlan:
    """Parse canonical spec.kv text into the normalised plan it was lowered from.

    Args:
        text: spec.kv text as produced by ``lower_plan``.

    Returns:
        The plan; ``lower_plan`` of it gives back ``text`` byte for byte.

    Raises:
        SpecParseError: The text is malformed (a line without ``=``, a bad key, escape or
            integer), has duplicate, unknown or missing keys, is not canonical, or describes a
            plan that fails validation.
    """
    plan, diagnostics = validate_plan(_read(text))
    if plan is None:
        errors = [d for d in diagnostics if d.severity == "error"]
        shown = "; ".join(f"{d.code} at {d.path}: {d.message}" for d in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        raise SpecParseError(f"spec.kv describes an invalid plan: {shown}{more}")
    if lower_plan(plan) != text:
        raise SpecParseError("spec.kv text is not in canonical form")
    return plan


def validate_spec_kv(text: str) -> list[Diagnostic]:
    """Parse and validate spec.kv text, reporting problems as diagnostics (never raises).

    Args:
        text: spec.kv text, e.g. as received by the agent.

    Returns:
        The plan diagnostics (paths point into the equivalent JSON plan), or a single
        ``spec_kv.unparseable`` diagnostic when the text is malformed or not canonical.
        Empty when the text is a valid canonical spec.
    """
    try:
        raw = _read(text)
    except SpecParseError as exc:
        return [Diagnostic(code="spec_kv.unparseable", path="$", message=str(exc))]
    plan, diagnostics = validate_plan(raw)
    if plan is not None and lower_plan(plan) != text:
        message = "spec.kv text is not in canonical form"
        return [Diagnostic(code="spec_kv.unparseable", path="$", message=message)]
    return diagnostics
