"""Canonical JSON: the exact bytes a signature covers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["MAX_DEPTH", "MAX_SAFE_INTEGER", "CanonicalizationError", "canonical_bytes"]

#: Largest integer magnitude accepted: every JSON implementation (including JavaScript's) reads
#: integers up to 2**53 - 1 exactly, so all parties agree on the value that was signed.
MAX_SAFE_INTEGER: Final = 2**53 - 1
#: Deepest nesting of objects and arrays accepted (also stops reference cycles).
MAX_DEPTH: Final = 64


class CanonicalizationError(ValueError):
    """A value has no canonical JSON form (a float, a non-JSON type, a non-string key, ...)."""


def canonical_bytes(payload: Mapping[str, Any]) -> bytes:
    """Serialize a JSON object deterministically; these are the bytes that get signed.

    The form is JSON with object members sorted by key, no insignificant whitespace and UTF-8
    output without ``\\u`` escapes except for the control characters, ``"`` and ``\\``. Key order is by
    UTF-16 code units, so for the accepted values the output equals RFC 8785 (JCS) and can be
    reproduced in other languages. The same payload therefore always gives the same bytes, whatever
    the insertion order of its keys.

    Accepted values: ``dict`` and other mappings with ``str`` keys, ``list`` and ``tuple``, ``str``,
    ``int`` (within +/- :data:`MAX_SAFE_INTEGER`), ``bool`` and ``None``, nested at most
    :data:`MAX_DEPTH` deep. Floats are refused, NaN and infinities included: their text form is not
    portable, so amounts must be integers (seconds, bytes, milli-units) or strings.

    Args:
        payload: The JSON object to serialize.

    Returns:
        The canonical UTF-8 bytes.

    Raises:
        CanonicalizationError: If ``payload`` is not a mapping or contains a value listed as refused
            above, a string that is not valid Unicode (a lone surrogate), or is nested too deeply.
    """
    return _canonical(payload)


def _canonical(payload: object) -> bytes:
    if not isinstance(payload, Mapping):
        raise CanonicalizationError(f"payload must be a JSON object, not {type(payload).__name__}")
    out: list[str] = []
    _write_object(payload, out, 1)
    return "".join(out).encode("utf-8")


def _write(value: object, out: list[str], depth: int) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            raise CanonicalizationError(f"integer {value} is outside +/- (2**53 - 1)")
        out.append(str(int(value)))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, float):
        raise CanonicalizationError(f"floats are not allowed in signed payloads (got {value!r})")
    elif isinstance(value, Mapping):
        _write_object(value, out, depth + 1)
    elif isinstance(value, list | tuple):
        _check_depth(depth + 1)
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    else:
        raise CanonicalizationError(f"{type(value).__name__} is not a JSON type")


def _write_object(value: Mapping[Any, Any], out: list[str], depth: int) -> None:
    _check_depth(depth)
    members: list[tuple[bytes, str, Any]] = []
    for key, item in value.items():
        if not isinstance(key, str):
            raise CanonicalizationError(f"object keys must be strings, not {type(key).__name__}")
        encoded = _string(key)  # rejects lone surrogates before the UTF-16 encoding below
        members.append((key.encode("utf-16-be"), encoded, item))
    members.sort(key=lambda member: member[0])
    out.append("{")
    for index, (_, encoded, item) in enumerate(members):
        if index:
            out.append(",")
        out.append(encoded)
        out.append(":")
        _write(item, out, depth)
    out.append("}")


def _check_depth(depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CanonicalizationError(f"nested deeper than {MAX_DEPTH} levels")


def _string(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise CanonicalizationError("string is not valid Unicode (lone surrogate)") from exc
    return json.dumps(value, ensure_ascii=False)
