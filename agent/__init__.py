"""The ByteOr agent: the daemon that runs on every managed host."""

from __future__ import annotations

import sys

# httpx imports its command-line tool, and with it click, rich and pygments (about 10 MiB),
# whenever click happens to be installed, as it is beside the control plane. The agent never
# uses that tool: mark it absent so ``import httpx`` loads only the client.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

__all__: list[str] = []
