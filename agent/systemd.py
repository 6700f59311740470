"""The sd_notify protocol: readiness, status text and watchdog pings to systemd.

A no-op outside systemd (no ``NOTIFY_SOCKET``). The protocol is one datagram per message to the
socket systemd names, so it needs no library.
"""

from __future__ import annotations

import logging
import os
import socket

__all__ = ["SystemdNotifier"]

logger = logging.getLogger("byteor.agent.systemd")


class SystemdNotifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        watchdog_for_us = usec.isdigit() and (not pid or pid == str(os.getpid()))
        #: Seconds between watchdog pings (half the watchdog timeout), or None without a watchdog.
        self.watchdog_interval = int(usec) / 2_000_000 if watchdog_for_us else None
        self.ready_sent = False

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def _send(self, message: str) -> None:
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message.encode())
        except OSError as exc:
            logger.warning("could not notify systemd: %s", exc)

    def ready(self, status: str) -> None:
        """Tell systemd start-up is complete (once)."""
        if not self.ready_sent:
            self.ready_sent = True
            self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=stopping")
