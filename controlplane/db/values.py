"""``column IN (values)`` as one bound parameter, however many values there are.

SQLAlchemy's ``column.in_(values)`` expands to one bound parameter per value when the statement
runs. For the lists a fleet produces (the agent-key sweep checks 5,000 key ids per statement, a
rollout locks 10,000 agents in chunks) that expansion is Python work per value on every
execution, and on PostgreSQL every distinct list length is another prepared statement that the
server parses and plans again. :func:`one_of` sends the values as one parameter instead:

* PostgreSQL: ``column = ANY($1::VARCHAR[])``, one array parameter (asyncpg encodes it in C);
* SQLite: ``column IN (SELECT value FROM json_each(?))``, one JSON array string.

Both give the same rows as ``IN``; an empty list matches nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import String, any_, bindparam, func, select
from sqlalchemy.dialects.postgresql import ARRAY

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sqlalchemy import ColumnElement
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import InstrumentedAttribute

__all__ = ["one_of"]

_json = msgspec.json.Encoder()


def one_of(
    session: AsyncSession,
    column: InstrumentedAttribute[str] | ColumnElement[str],
    values: Iterable[str],
) -> ColumnElement[bool]:
    """A condition true where ``column`` is one of ``values`` (on ``session``'s database)."""
    items = list(values)
    if session.get_bind().dialect.name == "postgresql":
        array: Any = bindparam(None, items, type_=ARRAY(String))
        condition: ColumnElement[bool] = column == any_(array)
        return condition
    each = func.json_each(bindparam(None, _json.encode(items).decode(), type_=String))
    return column.in_(select(each.table_valued("value").c.value))
