"""`gateway status` asking the service: the token goes to the configured address and no further.

Two tiny local HTTP servers stand in for what may listen on the port: one redirecting to the
other, which records every request's headers, and one that is not the gateway at all.
"""

from __future__ import annotations

import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, ClassVar

import pytest

from gateway.config import loader
from gateway.service import status
from tests.integration.test_tls import make_ca, make_cert

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from gateway.config.settings import Settings

pytestmark = pytest.mark.integration

TOKEN = "a-long-enough-metrics-token-0123456789abcdef"
Answer = tuple[int, dict[str, str], bytes]


class _Recording(BaseHTTPRequestHandler):
    answer: ClassVar[Callable[[], Answer]]
    seen: ClassVar[list[dict[str, str]]]

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base's name
        """Quiet: the test reads `seen`."""

    def do_GET(self) -> None:
        self.seen.append(dict(self.headers.items()))
        code, headers, body = self.answer()
        self.send_response(code)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[], Answer]], tuple[int, list[dict[str, str]]]]]:
    """Start local servers answering as told: (port, headers of each request seen)."""
    started: list[ThreadingHTTPServer] = []

    def start(
        answer: Callable[[], Answer], tls: tuple[Path, Path] | None = None
    ) -> tuple[int, list[dict[str, str]]]:
        seen: list[dict[str, str]] = []
        handler = type("Handler", (_Recording,), {"answer": staticmethod(answer), "seen": seen})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if tls is not None:  # HTTPS with this certificate and key
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server.server_address[1], seen

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def settings_on(port: int, metrics: dict[str, str] | None = None) -> Settings:
    """A configuration whose metrics server, with a token, listens on `port` of loopback."""
    return loader.validate(
        {
            "mqtt": {"subscriptions": [{"topic": "s/{device}/{measurement}", "format": "json"}]},
            "buffer": {"path": "buffer"},
            "influx": {"api": "v1", "database": "telemetry"},
            "metrics": {"listen": f"127.0.0.1:{port}", "token": TOKEN, **(metrics or {})},
        }
    )


def test_a_redirect_is_an_error_naming_it_and_the_token_never_reaches_its_target(
    serve: Callable[[Callable[[], Answer]], tuple[int, list[dict[str, str]]]],
) -> None:
    """The listen port redirects elsewhere: an error naming the Location; the second server
    never sees a request, so never the token."""
    elsewhere, reached = serve(lambda: (200, {}, json.dumps({"runtime": {}}).encode()))
    target = f"http://127.0.0.1:{elsewhere}/api/v1/status"
    port, asked = serve(lambda: (302, {"Location": target}, b""))
    with pytest.raises(status.ServiceAnswerError) as info:
        status.from_service(settings_on(port), top=5)
    assert target in str(info.value)
    assert "redirect" in str(info.value)
    assert [h.get("Authorization") for h in asked] == [f"Bearer {TOKEN}"]
    assert reached == []


def test_an_answer_that_is_not_the_gateways_is_an_error_saying_so(
    serve: Callable[[Callable[[], Answer]], tuple[int, list[dict[str, str]]]],
) -> None:
    """A web page on the port is not mistaken for the service, nor silently skipped."""
    port, _ = serve(lambda: (200, {"Content-Type": "text/html"}, b"<html>router</html>"))
    with pytest.raises(status.ServiceAnswerError, match="other than the gateway's status"):
        status.from_service(settings_on(port), top=5)


def test_an_environment_proxy_is_not_used(
    serve: Callable[[Callable[[], Answer]], tuple[int, list[dict[str, str]]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With http_proxy set, the request still goes to the listen address, not the proxy."""
    proxy, via_proxy = serve(lambda: (200, {}, b"{}"))
    port, asked = serve(lambda: (200, {}, json.dumps({"runtime": {"lag_s": 0}}).encode()))
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{proxy}")
    monkeypatch.setenv("no_proxy", "")
    assert status.from_service(settings_on(port), top=5) == {"runtime": {"lag_s": 0}}
    assert (len(asked), via_proxy) == (1, [])


def test_nothing_listening_falls_back_to_the_disk(
    serve: Callable[[Callable[[], Answer]], tuple[int, list[dict[str, str]]]],
) -> None:
    """A service that cannot answer now (a 503) is not an error: the buffer is read instead."""
    port, _ = serve(lambda: (503, {}, b'{"error": "no worker is answering"}'))
    assert status.from_service(settings_on(port), top=5) is None


def test_a_listener_certificate_issued_by_a_ca_is_trusted_as_it_is(
    serve: Callable[..., tuple[int, list[dict[str, str]]]], tmp_path: Path
) -> None:
    """The listener's own certificate is the anchor even when a CA issued it: the service's
    answer is read, not silently replaced by the disk's figures; another certificate is not."""
    ca = make_ca(tmp_path, "ca")
    cert, key = make_cert(tmp_path, ca, "listener", "IP:127.0.0.1", "serverAuth")
    other, _ = make_cert(tmp_path, ca, "other", "IP:127.0.0.1", "serverAuth")
    port, asked = serve(lambda: (200, {}, json.dumps({"runtime": {}}).encode()), (cert, key))
    tls = {"tls_cert_file": str(cert), "tls_key_file": str(key)}
    assert status.from_service(settings_on(port, tls), top=5) == {"runtime": {}}
    assert [h.get("Authorization") for h in asked] == [f"Bearer {TOKEN}"]
    # A server with a sibling certificate of the same CA is not the listener: no token sent.
    assert (
        status.from_service(settings_on(port, {**tls, "tls_cert_file": str(other)}), top=5) is None
    )
    assert len(asked) == 1
