"""The ByteOr wire contract: msgspec Structs and pure logic shared by the control plane and agent.

Nothing in this package performs I/O or imports ``controlplane`` or ``agent``.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
