"""systemd's notify protocol (sd_notify(3)): READY, WATCHDOG, STATUS and STOPPING messages.

A datagram of `KEY=value` lines to the AF_UNIX socket named by `$NOTIFY_SOCKET` (a leading `@`
is the abstract namespace). Without the variable, as outside systemd, every call does nothing.
Written out rather than taken from a package: the protocol is these few lines, and the packages
for it either need libsystemd to build or are unmaintained.
"""

from __future__ import annotations

import logging
import os
import socket

logger = logging.getLogger(__name__)


class Notifier:
    """Sends notify messages to systemd when it asked for them."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        """Read `$NOTIFY_SOCKET` and the watchdog settings from the environment."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        wanted = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        # sd_watchdog_enabled(3): ping at half the interval.
        self.watchdog_interval_s = int(usec) / 2e6 if wanted else None
        self._socket: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        """Whether systemd listens."""
        return bool(self._address)

    def send(self, **fields: str) -> None:
        """Send one message; `send(READY="1", STATUS="...")`. Failures are logged, not raised."""
        if not self._address:
            return
        message = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._socket is None:
                kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                self._socket = socket.socket(socket.AF_UNIX, kind)
            self._socket.sendto(message, self._address)
        except OSError as exc:
            logger.warning("cannot notify systemd at %r: %s", self._address, exc)

    def close(self) -> None:
        """Close the socket."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
