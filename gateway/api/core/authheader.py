"""The bearer token out of an `Authorization` header, whatever a client put there.

A header that is not ASCII (a non-UTF-8 byte arrives as a surrogate escape) or not
`Bearer <token>` is simply no token: the answer is 401, never an exception. The scheme is
case-insensitive (RFC 9110 section 11.1).
"""

from __future__ import annotations

import hmac

SCHEME = "bearer"


def bearer_token(header: str | None) -> bytes | None:
    """The credentials of a `Bearer` header as bytes; None for anything else."""
    if header is None or not header.isascii():
        return None
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip(" \t")
    if scheme.lower() != SCHEME or not credentials:
        return None
    return credentials.encode("ascii")


def is_authorized(header: str | None, token: bytes) -> bool:
    """Whether `header` carries `token`; the compare takes the same time wherever they differ."""
    given = bearer_token(header)
    # Compared even without a token, so that a refusal takes no shorter path.
    return hmac.compare_digest(given or b"", token) and given is not None
