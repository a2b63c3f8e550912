"""TLS contexts from the configuration: TLS 1.2 or newer, certificates always verified.

Pure standard library (`ssl`); the shells hand the contexts to their clients and servers.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from gateway.config.mqtt import TlsSettings


def client_context(tls: TlsSettings | None) -> ssl.SSLContext:
    """A context for connecting to a server: its CA or the system's, a client certificate.

    The host name is checked unless `verify_hostname` is off.

    Raises:
        ssl.SSLError: a file is not a certificate or key (the config checked that they exist).
    """
    context = ssl.create_default_context(
        cafile=str(tls.ca_file) if tls is not None and tls.ca_file else None
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls is not None:
        if tls.cert_file and tls.key_file:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        context.check_hostname = tls.verify_hostname
    return context


def server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A context for serving HTTPS with a certificate and its key."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


def describe(exc: BaseException) -> str | None:
    """A plain explanation when `exc` (or what caused it) is a TLS failure, else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"the server's certificate was not accepted: {seen.verify_message}"
        if isinstance(seen, ssl.SSLError):
            return f"TLS failed: {seen.reason or seen}"
        seen = seen.__cause__ or seen.__context__
    return None
