"""Base Structs that carry the encoding options once.

- :class:`RestInput` is for REST request bodies: unknown fields are refused, so a typo in a field name
  is a 400 naming the field instead of a silently ignored setting.
- :class:`RestOutput` is for REST responses.
- :class:`Message` is for agent <-> server protocol messages: unknown fields are tolerated so that old
  agents keep working against newer servers. New fields must always have defaults.
"""

from __future__ import annotations

import msgspec

__all__ = ["Message", "RestInput", "RestOutput"]


class RestInput(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base for REST request bodies (unknown fields are an error)."""


class RestOutput(msgspec.Struct, kw_only=True):
    """Base for REST response bodies."""


class Message(msgspec.Struct, kw_only=True):
    """Base for agent protocol messages (unknown fields are ignored)."""
