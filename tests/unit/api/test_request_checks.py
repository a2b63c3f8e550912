"""The Host allow-list and the Authorization header, as pure functions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.api.core.authheader import bearer_token, is_authorized
from gateway.api.core.hosts import HostPolicy, host_name

if TYPE_CHECKING:
    import ipaddress

POLICY = HostPolicy.of("0.0.0.0", ["gateway"])  # noqa: S104


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("example.com", "example.com"),
        ("Example.COM:8080", "example.com"),
        ("localhost.", "localhost"),
        ("localhost:", "localhost"),
        ("127.0.0.1:9108", "127.0.0.1"),
        ("[::1]:9108", "::1"),
        ("[::1]", "::1"),
        ("[FE80::1%eth0]", "fe80::1%eth0"),
        ("::1", None),  # an IPv6 address without brackets
        ("[::1]x", None),
        ("[not-an-ip]", None),
        ("a b", None),
        ("host:port", None),
        ("", None),
        ("évil.example", None),
        ("host:٣", None),  # a digit, but not an ASCII one
    ],
)
def test_host_name_strips_the_port_and_refuses_what_is_no_host(
    header: str, name: str | None
) -> None:
    """Port and brackets go, case folds, a trailing dot goes; anything else is no host."""
    assert host_name(header) == name


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3:9108", True),
        ("[::1]:9108", True),
        ("localhost:9108", True),
        ("gateway:9108", True),
        ("GATEWAY", True),
        (None, True),
        ("evil.example", False),
        ("gateway.evil.example", False),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("", False),
    ],
)
def test_ip_literals_localhost_and_listed_names_pass(header: str | None, allowed: bool) -> None:
    """What DNS rebinding needs (a name of its own) is refused."""
    assert POLICY.allows(header) is allowed


def test_the_listen_name_is_allowed_but_not_its_address() -> None:
    """A name in `listen` is answered; an IP in `listen` adds no name."""
    assert HostPolicy.of("edge-box.lan", []).allows("edge-box.lan:9108")
    assert HostPolicy.of("127.0.0.1", []).names == frozenset()


@given(st.ip_addresses(), st.one_of(st.none(), st.integers(0, 65535)))
def test_every_ip_literal_passes(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int | None
) -> None:
    """Any IPv4 or bracketed IPv6 address, with or without a port."""
    host = f"[{address}]" if address.version == 6 else str(address)
    header = host if port is None else f"{host}:{port}"
    assert HostPolicy.of("", []).allows(header)


@given(st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,20}){0,3}", fullmatch=True))
def test_names_pass_only_when_listed(name: str) -> None:
    """A name is answered exactly when it is localhost or listed."""
    assert HostPolicy.of("", []).allows(name) is (name == "localhost")
    assert HostPolicy.of("", [name]).allows(f"{name.upper()}:80")


@given(st.text())
def test_any_host_header_gets_an_answer_not_an_exception(header: str) -> None:
    """Whatever a client sends, a yes or a no."""
    assert isinstance(POLICY.allows(header), bool)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", b"abc"),
        ("bearer abc", b"abc"),
        ("BEARER   abc  ", b"abc"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic abc", None),
        ("Bearer caf\u00e9", None),
        ("Bearer \udcff\udcfe", None),  # non-UTF-8 bytes as aiohttp hands them on
        (None, None),
        ("", None),
    ],
)
def test_bearer_token_takes_only_an_ascii_bearer_header(
    header: str | None, token: bytes | None
) -> None:
    """The scheme in any case; non-ASCII, other schemes and empty credentials are no token."""
    assert bearer_token(header) == token


@given(st.text(), st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1))
def test_only_the_token_itself_is_authorized(header: str, token: str) -> None:
    """No header but `Bearer <token>` (any case) authorizes, and nothing raises."""
    expected = token.encode()
    assert is_authorized(f"bEaReR {token}", expected)
    assert is_authorized(header, expected) is (bearer_token(header) == expected)


def test_allowed_hosts_are_kept_as_a_browser_sends_them() -> None:
    """An internationalised name is listed in its punycode form, in lower case, without the
    root's dot: the form a browser's Host header has; a name with a port is refused."""
    from pydantic import ValidationError  # noqa: PLC0415

    from gateway.config.sections import MetricsSettings  # noqa: PLC0415

    settings = MetricsSettings(allowed_hosts=["Bücher.Example.", "gateway"])
    assert settings.allowed_hosts == ["xn--bcher-kva.example", "gateway"]
    policy = HostPolicy.of("127.0.0.1", settings.allowed_hosts)
    assert policy.allows("xn--bcher-kva.example:9108")
    with pytest.raises(ValidationError, match="allowed_hosts"):
        MetricsSettings(allowed_hosts=["gateway:9108"])
