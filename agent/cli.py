"""``byteor-agent``: the host daemon's command line.

Enrollment, the daemon loop and status arrive with the agent work; this release ships the entry
point and its version so packaging and the systemd unit can be wired up.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from shared import __version__

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``byteor-agent``; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="byteor-agent", description="ByteOr host agent")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
