"""Fault injection for the fault tests: make the gateway fail on a chosen payload.

`GATEWAY_FAULT_INJECT=ACTION:NEEDLE` makes ingest fail on every message whose payload holds the
bytes NEEDLE, while it takes that message: `raise` raises a RuntimeError (what a bug in a
decoder would do), `kill` sends the process SIGKILL (a crash no exception handler sees: a
segfault in a C extension, the out-of-memory killer). Unset, as in production, it costs nothing
per message: ingest then has no hook at all.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

from gateway.errors import ConfigError, GatewayError

if TYPE_CHECKING:
    from collections.abc import Callable

ENV = "GATEWAY_FAULT_INJECT"
ACTIONS = ("raise", "kill")


class InjectedFault(GatewayError):
    """Raised by the `raise` action: an unexpected exception, on purpose."""


def from_environment() -> Callable[[bytes], None] | None:
    """The hook `GATEWAY_FAULT_INJECT` asks for, or None.

    Raises:
        ConfigError: the variable is set but malformed.
    """
    spec = os.environ.get(ENV)
    if not spec:
        return None
    action, _, needle_text = spec.partition(":")
    if action not in ACTIONS or not needle_text:
        raise ConfigError([f"{ENV}: expected one of {', '.join(ACTIONS)}, ':' and a payload part"])
    needle = needle_text.encode()

    def inject(payload: bytes) -> None:
        if needle in payload:
            if action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise InjectedFault(f"injected fault for a payload holding {needle!r}")

    return inject
