"""Runtime configuration layering: organization < project < environment.

Merge rules (applied left to right, later layers win):

- two JSON objects merge key by key, recursively;
- any other value (scalar or array) in a later layer replaces the earlier one;
- ``null`` in a later layer deletes the key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["merge_layers"]


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in layer.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        elif isinstance(value, Mapping):
            merged[key] = _merge({}, value)
        else:
            merged[key] = value
    return merged


def merge_layers(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Merge configuration layers, earliest first.

    Args:
        *layers: JSON objects, e.g. the organization's, the project's, the environment's.

    Returns:
        A new object; the inputs are not modified.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged = _merge(merged, layer)
    return merged
