"""Diagnostic collection and type checks shared by the plan validators.

Nothing here walks arbitrary values: every check looks at one value's type and, for strings, at a
bounded prefix, so hostile input (deep nesting, huge strings or ints, odd keys) costs O(1) per
field. User text only reaches messages through :func:`show`, which truncates and JSON-escapes it.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Final, Literal, TypeGuard, TypeVar

from shared.spec._model import MAX_DIAGNOSTICS, MAX_IDENTIFIER_LENGTH, Diagnostic

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

__all__ = [
    "MISSING",
    "Sink",
    "check_choice",
    "check_identifier",
    "check_object",
    "get_identifier",
    "index",
    "is_int",
    "member",
    "show",
    "show_int",
    "type_name",
]

T = TypeVar("T")

#: Returned by ``dict.get`` when a field is absent (``None`` is a legitimate JSON value).
MISSING: Final = object()

_SIMPLE_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_BAD: Final = r"\x00-\x1f\x7f-\x9f\ud800-\udfff"
_IDENTIFIER: Final = re.compile(rf"[^\s{_BAD}](?:[^{_BAD}]*[^\s{_BAD}])?")
_TYPE_NAMES: Final = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    type(None): "null",
}


class Sink:
    """Collects diagnostics, keeping at most :data:`MAX_DIAGNOSTICS` (the last says truncated)."""

    def __init__(self, limit: int = MAX_DIAGNOSTICS) -> None:
        self.items: list[Diagnostic] = []
        self.has_errors = False
        self.full = False
        self._limit = limit

    def error(self, code: str, path: str, message: str) -> None:
        """Record an error."""
        self._add(code, path, message, "error")

    def warning(self, code: str, path: str, message: str) -> None:
        """Record an advisory warning (the plan stays valid)."""
        self._add(code, path, message, "warning")

    def _add(
        self, code: str, path: str, message: str, severity: Literal["error", "warning"]
    ) -> None:
        if severity == "error":
            self.has_errors = True
        if self.full:
            return
        if len(self.items) >= self._limit - 1:
            self.full = True
            self.items.append(
                Diagnostic(
                    code="plan.diagnostics_truncated",
                    path="$",
                    message=f"too many problems; only the first {self._limit - 1} are reported",
                    severity="error" if self.has_errors else "warning",
                )
            )
            return
        self.items.append(Diagnostic(code=code, path=path, message=message, severity=severity))


def show(value: str, limit: int = MAX_IDENTIFIER_LENGTH) -> str:
    """Quote user text for a message: JSON-escaped (ASCII only), truncated to ``limit`` chars."""
    if len(value) > limit:
        return json.dumps(value[:limit]) + "..."
    return json.dumps(value)


def show_int(value: int) -> str:
    """Format a user integer for a message without ever converting a giant int to text."""
    if -(10**12) < value < 10**12:
        return str(value)
    return "a huge integer" if value > 0 else "a hugely negative integer"


def type_name(value: object) -> str:
    """Name a value's JSON type for messages ("an object", "null", ...)."""
    name = _TYPE_NAMES.get(type(value))
    if name is not None:
        return name
    return f"a Python {type(value).__name__[:MAX_IDENTIFIER_LENGTH]}"


def is_int(value: object) -> TypeGuard[int]:
    """Tell whether a value is a JSON integer (``bool`` is not, although Python says so)."""
    return isinstance(value, int) and not isinstance(value, bool)


def member(path: str, key: str) -> str:
    """Extend a JSON path by an object member: ``$.a`` or ``$["odd key"]``."""
    if _SIMPLE_KEY.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{show(key)}]"


def index(path: str, i: int) -> str:
    """Extend a JSON path by an array index: ``$.stages[4]``."""
    return f"{path}[{i}]"


def check_object(
    sink: Sink, value: object, path: str, fields: Collection[str], what: str
) -> dict[str, object] | None:
    """Check that ``value`` is an object with only the given fields.

    Args:
        sink: Where diagnostics go.
        value: The candidate object.
        path: Its JSON path.
        fields: The field names the schema allows.
        what: A noun for the wrong-type message, e.g. "a stage".

    Returns:
        The allowed members (string keys only), or ``None`` when ``value`` is not an object.
    """
    if not isinstance(value, dict):
        sink.error("plan.wrong_type", path, f"expected {what} (an object), got {type_name(value)}")
        return None
    known: dict[str, object] = {}
    for key, item in value.items():
        if sink.full:
            break
        if not isinstance(key, str):
            sink.error(
                "plan.non_string_key", path, f"object keys must be strings, got {type_name(key)}"
            )
        elif key in fields:
            known[key] = item
        else:
            allowed = ", ".join(sorted(fields))
            sink.error(
                "plan.unknown_field",
                member(path, key),
                f"unknown field {show(key)} in {what}; allowed fields: {allowed}",
            )
    return known


def check_identifier(sink: Sink, value: object, path: str, what: str) -> str | None:
    """Check an id or name: a string of 1-64 characters, no control characters, trimmed.

    Returns:
        The identifier, or ``None`` after reporting why it is not one.
    """
    if not isinstance(value, str):
        sink.error("plan.wrong_type", path, f"{what} must be a string, got {type_name(value)}")
        return None
    if len(value) > MAX_IDENTIFIER_LENGTH:
        sink.error(
            "plan.invalid_identifier",
            path,
            f"{what} {show(value)} is longer than {MAX_IDENTIFIER_LENGTH} characters",
        )
        return None
    if not _IDENTIFIER.fullmatch(value):
        problem = "must not be empty" if not value else "has control characters or surrounding"
        if value:
            problem += f" whitespace: {show(value)}"
        sink.error("plan.invalid_identifier", path, f"{what} {problem}")
        return None
    return value


def get_identifier(
    sink: Sink, fields: Mapping[str, object], path: str, key: str, what: str
) -> str | None:
    """Check the required identifier member ``key`` of an object at ``path``.

    Returns:
        The identifier, or ``None`` after reporting it missing or invalid.
    """
    value = fields.get(key, MISSING)
    if value is MISSING:
        sink.error("plan.missing_field", member(path, key), f"{what} is required")
        return None
    return check_identifier(sink, value, member(path, key), what)


def check_choice(
    sink: Sink,
    fields: Mapping[str, object],
    path: str,
    key: str,
    options: Mapping[str, T],
    *,
    code: str,
    default: T | None,
) -> T | None:
    """Check the member ``key`` of an object at ``path`` against a fixed set of strings.

    Args:
        sink: Where diagnostics go.
        fields: The object's members.
        path: The object's JSON path.
        key: The member name.
        options: The accepted strings, mapped to their typed value.
        code: The diagnostic code for a string that is not an option.
        default: The value of an absent member; ``None`` makes the member required.

    Returns:
        The typed option (or the default), or ``None`` after reporting a problem.
    """
    value = fields.get(key, MISSING)
    where = member(path, key)
    if value is MISSING:
        if default is None:
            sink.error("plan.missing_field", where, f"{key} is required")
        return default
    if not isinstance(value, str):
        sink.error("plan.wrong_type", where, f"{key} must be a string, got {type_name(value)}")
        return None
    choice = options.get(value)
    if choice is None:
        allowed = ", ".join(options)
        rule = f"must be one of {allowed}" if len(options) > 1 else f"only {allowed} is supported"
        sink.error(code, where, f"{key} {show(value)} is not supported: {rule}")
    return choice
