"""A server connection turned into TLS from inside its protocol, on its first bytes.

`loop.start_tls` is a coroutine, and a task would start it a loop turn late: meanwhile uvloop
(which starts reading right after `connection_made`, paused or not) may hand the ClientHello to
the plain protocol, and asyncio may hand the first decrypted bytes to the protocol before the
task learns the handshake is done. So the upgrade starts when the plain protocol receives the
first bytes: reading is paused, `start_tls` is stepped by hand up to its wait for the
handshake (it swaps the transport's protocol synchronously), and the bytes already read are
given to the TLS protocol right after its own `connection_made` and the resumed reading, both
of which `start_tls` scheduled.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Coroutine


def upgrade(
    raw: asyncio.Transport,
    protocol: asyncio.BaseProtocol,
    context: ssl.SSLContext,
    first: bytes,
    *,
    handshake_timeout_s: float,
    done: Callable[[asyncio.BaseTransport | None, OSError | None], None],
) -> None:
    """Start TLS on `raw` for `protocol`, `first` being the bytes read so far.

    `done(transport, error)` is called once the handshake is through or failed.
    """
    raw.pause_reading()
    loop = asyncio.get_running_loop()
    coro = loop.start_tls(
        raw, protocol, context, server_side=True, ssl_handshake_timeout=handshake_timeout_s
    )
    _step(coro, done)
    loop.call_soon(_feed, raw, first)


def _step(
    coro: Coroutine[Any, Any, asyncio.BaseTransport | None],
    done: Callable[[asyncio.BaseTransport | None, OSError | None], None],
) -> None:
    """Run `coro` up to its next wait, as a task would, and again once that wait is over."""
    try:
        waiting = coro.send(None)
    except StopIteration as finished:
        done(finished.value, None)
        return
    except OSError as exc:  # the handshake failed, timed out, or the peer went away
        done(None, exc)
        return
    future = cast("asyncio.Future[object]", waiting)
    future._asyncio_future_blocking = False  # noqa: SLF001 - what a task does with it
    future.add_done_callback(lambda _: _step(coro, done))


def _feed(raw: asyncio.Transport, data: bytes) -> None:
    """Give `data` to the transport's protocol now, the TLS one (a buffered protocol)."""
    if raw.is_closing():
        return
    tls = cast("asyncio.BufferedProtocol", raw.get_protocol())
    view = memoryview(data)
    while view:
        buffer = memoryview(tls.get_buffer(len(view)))
        n = min(len(buffer), len(view))
        buffer[:n] = view[:n]
        tls.buffer_updated(n)
        view = view[n:]
