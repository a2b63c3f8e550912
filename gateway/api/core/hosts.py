"""Which `Host` header values the HTTP server answers: the defence against DNS rebinding.

A web page the operator opens can point its own name at 127.0.0.1 and then read the gateway
from the browser; the browser still sends the page's name in `Host`. So the server answers IP
literals (no rebinding without a name), `localhost`, and the names the operator lists.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

LOCAL_NAMES = frozenset({"localhost"})


def host_name(header: str) -> str | None:
    """The host of a `Host` header without its port, lower case; None when it is no host.

    `[::1]:9108` -> `::1`; `Gateway.:80` -> `gateway`; `a:b:c` (an IPv6 address without
    brackets) is no host.
    """
    value = header.strip()
    if value.startswith("["):
        inside, sep, rest = value[1:].partition("]")
        if not sep or (rest and not _is_port(rest)):
            return None
        return inside.lower() if is_ip_literal(inside) else None
    name, sep, port = value.rpartition(":")
    if not sep:
        name = port
    elif not _is_port(":" + port):
        return None
    name = name.lower().rstrip(".")
    if not name or not all(c.isalnum() or c in "-._" for c in name) or not name.isascii():
        return None
    return name


def _is_port(text: str) -> bool:
    """`:` and a decimal port (or nothing after the colon, which RFC 3986 allows)."""
    return text.startswith(":") and (text[1:] == "" or (text[1:].isdigit() and text.isascii()))


def is_ip_literal(host: str) -> bool:
    """An IPv4 or IPv6 address (with a zone, `fe80::1%eth0`), not a name."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HostPolicy:
    """The names answered besides IP literals and `localhost`."""

    names: frozenset[str]

    @classmethod
    def of(cls, listen_host: str, allowed: list[str]) -> HostPolicy:
        """From `[metrics] listen`'s host (when it is a name) and `[metrics] allowed_hosts`."""
        names = {name.lower().rstrip(".") for name in allowed}
        if listen_host and not is_ip_literal(listen_host):
            names.add(listen_host.lower().rstrip("."))
        return cls(frozenset(names))

    def allows(self, header: str | None) -> bool:
        """Whether a request with this `Host` header (None: without one) is answered.

        Without a header no browser sent it (every browser sends one), so no page can have
        rebound a name: answered.
        """
        if header is None:
            return True
        host = host_name(header)
        if host is None:
            return False
        return is_ip_literal(host) or host in LOCAL_NAMES or host in self.names
