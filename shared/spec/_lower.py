"""Lowering a normalised plan to canonical spec.kv text, and hashing that text.

The key order is a fixed schema order (see the package docstring); :mod:`shared.spec._parse`
reads keys in exactly the same order, so the two stay inverse to each other.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from shared.spec._model import SPEC_VERSION, Constraints, PipelinePlan, SingleRingOptions

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["escape_value", "lower_plan", "spec_hash"]


def escape_value(value: str) -> str:
    r"""Escape a string value: ``\`` becomes ``\\``, newline ``\n`` and carriage return ``\r``."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def _entries(plan: PipelinePlan) -> Iterator[tuple[str, str]]:
    yield "spec.version", str(SPEC_VERSION)
    yield "pipeline.name", escape_value(plan.name)
    yield "pipeline.target", plan.target
    if plan.target == "SingleRing":
        yield "pipeline.stages.count", str(len(plan.stages))
        for i, stage in enumerate(plan.stages):
            prefix = f"pipeline.stages.{i}"
            yield f"{prefix}.id", escape_value(stage.id)
            yield f"{prefix}.depends_on.count", str(len(stage.depends_on))
            for j, dep in enumerate(stage.depends_on):
                yield f"{prefix}.depends_on.{j}", str(dep)
        constraints = plan.constraints or Constraints()
        yield "pipeline.constraints.shards", str(constraints.shards)
        yield "pipeline.constraints.ordering", constraints.ordering
        yield "pipeline.constraints.shard_key", escape_value(constraints.shard_key or "")
        options = plan.single_ring or SingleRingOptions()
        yield "pipeline.single_ring.producer", options.producer
        yield "pipeline.single_ring.scheduling", options.scheduling
    else:
        yield "pipeline.lanes.count", str(len(plan.lanes))
        for i, lane in enumerate(plan.lanes):
            prefix = f"pipeline.lanes.{i}"
            yield f"{prefix}.name", escape_value(lane.name)
            yield f"{prefix}.kind", lane.kind
            yield f"{prefix}.on_full", lane.on_full
            yield f"{prefix}.capacity", str(lane.capacity)
        yield "pipeline.roles.count", str(len(plan.roles))
        for i, role in enumerate(plan.roles):
            prefix = f"pipeline.roles.{i}"
            yield f"{prefix}.name", escape_value(role.name)
            yield f"{prefix}.kind", role.kind
            for key, names in (("inputs", role.inputs), ("outputs", role.outputs)):
                yield f"{prefix}.{key}.count", str(len(names))
                for j, name in enumerate(names):
                    yield f"{prefix}.{key}.{j}", escape_value(name)


def lower_plan(plan: PipelinePlan) -> str:
    """Lower a normalised plan to its canonical spec.kv text.

    Every field is written, defaults included, so logically equal plans give byte-identical
    text. A SingleRing plan whose ``constraints`` or ``single_ring`` is ``None`` is lowered with
    the defaults; sections of the other target are not written.

    Args:
        plan: A plan as returned by ``validate_plan`` or ``parse_spec_kv``.

    Returns:
        ``key=value`` lines joined by ``"\\n"``, with a trailing newline.
    """
    return "".join(f"{key}={value}\n" for key, value in _entries(plan))


def spec_hash(spec_kv: str) -> str:
    """Hash spec.kv text.

    Args:
        spec_kv: The text (normally from ``lower_plan``).

    Returns:
        ``"sha256:"`` followed by the 64 hex digit SHA-256 of the UTF-8 bytes.

    Raises:
        UnicodeEncodeError: The text holds lone surrogates (never the case for lowered plans).
    """
    return "sha256:" + hashlib.sha256(spec_kv.encode("utf-8")).hexdigest()
