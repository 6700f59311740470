"""The request class: JSON too deeply nested, or not UTF-8, is a 400 rather than a 500."""

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
        except UnicodeDecodeError:
            raise ClientException("Request body is not valid UTF-8") from None
