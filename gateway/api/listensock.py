"""The HTTP server's listening sockets: out of file descriptors, they shed, not spin.

With the connection cap well below the open-file limit the server itself never gets there,
but something else in the process might. asyncio's accept loop then logs an error for every
failed accept and, on Linux, tries the still-readable socket again up to `backlog` times a
turn: hundreds of thousands of errors a minute. Here an accept that fails for want of
descriptors closes a reserved descriptor, accepts and at once closes what waits in the
backlog, and takes the reserve back, as libuv (under uvloop) does: the socket is no longer
readable, nothing spins, and one warning is logged per episode. Under uvloop libuv accepts on
its own and this class's `accept` is not called.

asyncio's accept loop also takes up to `backlog` connections a turn, and the connection guard
counts a connection only two turns after its accept (a task makes the transport, which then
schedules `connection_made`): a burst held several times the cap in descriptors, enough to run
out at an open-file limit of 256. So `accept` takes at most `ACCEPTS_PER_TURN` a turn; the
rest wait in the backlog for the next turn, after the guard has made room.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket

logger = logging.getLogger(__name__)

OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE})
# Connections accepted in one turn of asyncio's loop, before the guard has counted any of them.
ACCEPTS_PER_TURN = 16


class SheddingSocket(socket.socket):
    """A listening socket whose `accept` sheds connections when descriptors run out."""

    reserve: int | None = None
    shed = 0
    _short = False
    _this_turn = 0

    def hold_reserve(self) -> None:
        """Keep one descriptor aside for the moment the others run out."""
        if self.reserve is None:
            try:
                self.reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self.reserve = None

    def accept(self) -> tuple[socket.socket, object]:
        """As `socket.accept`; out of descriptors, the waiting connections are closed."""
        if self._this_turn >= ACCEPTS_PER_TURN:
            raise BlockingIOError(errno.EAGAIN, "enough connections accepted this turn")
        try:
            accepted = super().accept()
        except OSError as exc:
            if exc.errno not in OUT_OF_DESCRIPTORS:
                raise
            if not self._shed_backlog(exc):
                # No reserve to drain the backlog with: asyncio's own pause of a second.
                raise
            raise BlockingIOError(errno.EAGAIN, "backlog shed") from exc
        if self._short:
            self._short = False
            logger.warning(
                "accepting HTTP connections again (%d closed unanswered for want of file "
                "descriptors)",
                self.shed,
            )
        if self._this_turn == 0:
            asyncio.get_running_loop().call_soon(self._next_turn)
        self._this_turn += 1
        self.hold_reserve()
        return accepted

    def _next_turn(self) -> None:
        self._this_turn = 0

    def close(self) -> None:
        """Close the socket and its reserve."""
        if self.reserve is not None:
            os.close(self.reserve)
            self.reserve = None
        super().close()

    def _shed_backlog(self, exc: OSError) -> bool:
        if not self._short:
            self._short = True
            logger.warning(
                "out of file descriptors (%s): new HTTP connections are closed unanswered "
                "until some are free",
                exc.strerror,
            )
        if self.reserve is None:
            self.hold_reserve()
            return False
        os.close(self.reserve)
        self.reserve = None
        # Until the backlog is empty, or even the reserve's place was taken meanwhile.
        with contextlib.suppress(OSError):
            while True:
                conn, _ = super().accept()
                conn.close()
                self.shed += 1
        self.hold_reserve()
        return True


Address = tuple[int, int, int, tuple[object, ...]]


def bind(addresses: list[Address], backlog: int) -> list[SheddingSocket]:
    """Listening sockets on `addresses` ((family, type, proto, sockaddr) from getaddrinfo)."""
    sockets: list[SheddingSocket] = []
    try:
        for family, kind, proto, address in dict.fromkeys(addresses):
            sock = SheddingSocket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
            sock.hold_reserve()
    except OSError:
        for opened in sockets:
            opened.close()
        raise
    return sockets
