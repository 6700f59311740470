"""Keyset pagination over sortable ids: ``?limit=`` (bounded) and an opaque ``?cursor=``."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from controlplane.errors import BadRequest
from shared.ids import is_valid_id

if TYPE_CHECKING:
    from sqlalchemy import Select
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import InstrumentedAttribute

__all__ = ["PageRequest", "decode_cursor", "encode_cursor", "fetch_page", "page_request"]


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    after: str | None


def encode_cursor(last_id: str) -> str:
    """An opaque cursor that resumes after ``last_id``."""
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The id a cursor resumes after; a malformed cursor is a 400."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
    except (binascii.Error, UnicodeError, ValueError):
        raise BadRequest("cursor is not one this API issued") from None
    if not is_valid_id(value):
        raise BadRequest("cursor is not one this API issued")
    return value


def page_request(
    limit: int | None, cursor: str | None, *, default: int, maximum: int
) -> PageRequest:
    """Validate ``?limit=`` and ``?cursor=``."""
    if limit is None:
        limit = default
    if not 1 <= limit <= maximum:
        raise BadRequest(f"limit must be between 1 and {maximum}")
    return PageRequest(limit=limit, after=decode_cursor(cursor) if cursor else None)


async def fetch_page(
    session: AsyncSession,
    statement: Select[Any],
    id_column: InstrumentedAttribute[str],
    page: PageRequest,
) -> tuple[list[Any], str | None]:
    """Run ``statement`` for one page ordered by id; returns the rows and the next cursor."""
    if page.after is not None:
        statement = statement.where(id_column > page.after)
    statement = statement.order_by(id_column).limit(page.limit + 1)
    rows = list((await session.scalars(statement)).all())
    if len(rows) > page.limit:
        rows = rows[: page.limit]
        return rows, encode_cursor(getattr(rows[-1], id_column.key))
    return rows, None
