"""Opaque, prefixed, sortable identifiers such as ``org_01JD...``.

The body is a 26 character Crockford base32 ULID: 48 bits of milliseconds since the epoch followed by
80 random bits. Identifiers minted by one process in the same millisecond increase monotonically, so
ordering by id is ordering by creation time, which keyset pagination relies on.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from typing import Final

__all__ = ["PREFIXES", "is_valid_id", "new_id"]

_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_RANDOM_BITS: Final = 80

PREFIXES: Final = frozenset(
    {
        "org",
        "prj",
        "env",
        "usr",
        "tok",
        "idn",
        "agt",
        "agk",
        "rpl",
        "enr",
        "drf",
        "ver",
        "cfb",
        "dep",
        "apr",
        "art",
        "job",
    }
)

_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """Return a new identifier such as ``prj_01JD3Q9W6T8ZP2X4B7C5N1M0KQ``.

    Args:
        prefix: One of :data:`PREFIXES`.

    Raises:
        ValueError: If the prefix is unknown.
    """
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    global _last_ms, _last_rand
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= _last_ms:
            now_ms = _last_ms
            _last_rand = (_last_rand + 1) % (1 << _RANDOM_BITS)
        else:
            _last_ms = now_ms
            _last_rand = secrets.randbits(_RANDOM_BITS - 1)  # headroom for increments
        value = (now_ms << _RANDOM_BITS) | _last_rand
    return f"{prefix}_{_encode(value, 26)}"


_ID_RE: Final = re.compile(r"^([a-z]{3})_[0-9A-HJKMNP-TV-Z]{26}$")


def is_valid_id(value: str, prefix: str | None = None) -> bool:
    """Tell whether ``value`` has the shape of an identifier (optionally with ``prefix``)."""
    match = _ID_RE.match(value)
    if match is None:
        return False
    return prefix is None or match.group(1) == prefix
