"""The request class: JSON nested deeper than the decoder's recursion limit is a 400, not a 500."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import ClientException

__all__ = ["ByteorRequest"]


class ByteorRequest(Request[Any, Any, Any]):
    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise ClientException("Request body JSON is nested too deeply") from None
