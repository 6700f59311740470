"""The pipeline spec compiler: authored plans (JSON) to canonical ``spec.kv`` text.

A plan targets either ``SingleRing`` (at most 4 stages in topological order on one ring) or
``LaneGraph`` (named lanes wired to roles in an acyclic graph). :func:`validate_plan` reports every
problem as a :class:`Diagnostic` with a stable code and a JSON path; :func:`compile_plan` also
lowers a valid plan to spec.kv and hashes it. The agent re-checks received text with
:func:`validate_spec_kv`. Pure logic: no I/O.

spec.kv format (version 1): UTF-8 ``key=value`` lines, each ending in ``"\\n"`` (the text ends with
one; no blank lines, no ``"\\r"``). The first line is ``spec.version=1``. Keys are dotted paths of
lower-case schema names and decimal array indexes (``pipeline.stages.1.depends_on.0``); they never
hold user data, so they need no escaping, and the first ``=`` on a line ends the key (values may
contain ``=``). Keys come in a fixed schema order, not sorted: ``pipeline.name``,
``pipeline.target``, then for SingleRing ``stages`` (each stage ``id``, ``depends_on``),
``constraints`` (``shards``, ``ordering``, ``shard_key``) and ``single_ring`` (``producer``,
``scheduling``); for LaneGraph ``lanes`` (each ``name``, ``kind``, ``on_full``, ``capacity``) and
``roles`` (each ``name``, ``kind``, ``inputs``, ``outputs``). Every list is written as
``<path>.count=N`` followed by its items ``<path>.0`` ... ``<path>.N-1`` in list order, so an empty
list is just ``<path>.count=0``. Integers are canonical decimals (no ``+``, no leading zeros),
booleans would be ``true``/``false``, strings are raw except that ``\\`` is written ``\\\\``, a
newline ``\\n`` and a carriage return ``\\r``; an absent optional string (``shard_key``) is an
empty value, identifiers never being empty. Every default is written explicitly and list order is
preserved (object key order and whitespace in the JSON do not matter), so equal plans give
byte-identical text and the same ``spec_hash`` (``sha256:`` + hex SHA-256 of the UTF-8 bytes).
The parser rejects rather than canonicalises: duplicate, unknown, missing or reordered keys,
malformed integers or escapes, and a missing trailing newline are all errors.
"""

from __future__ import annotations

from shared.spec._compile import compile_plan
from shared.spec._lower import escape_value, lower_plan, spec_hash
from shared.spec._model import (
    DEFAULT_CAPACITY,
    DIAGNOSTIC_CODES,
    MAX_CAPACITY,
    MAX_DIAGNOSTICS,
    MAX_IDENTIFIER_LENGTH,
    MAX_LANES,
    MAX_ROLE_LANES,
    MAX_ROLES,
    MAX_SHARDS,
    MAX_STAGES,
    MIN_CAPACITY,
    SPEC_VERSION,
    CompileResult,
    Constraints,
    Diagnostic,
    GraphRole,
    Lane,
    LaneKind,
    OnFull,
    Ordering,
    PipelinePlan,
    Producer,
    RoleKind,
    Scheduling,
    SingleRingOptions,
    Stage,
    Target,
)
from shared.spec._parse import SpecParseError, parse_spec_kv, validate_spec_kv
from shared.spec._validate import validate_plan

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
    "SpecParseError",
    "Stage",
    "Target",
    "compile_plan",
    "escape_value",
    "lower_plan",
    "parse_spec_kv",
    "spec_hash",
    "validate_plan",
    "validate_spec_kv",
]
