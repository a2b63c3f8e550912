"""A database that slows down: the batch size falls, and recovers when it speeds up again."""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING

import pytest

from gateway.tools import simulate
from tests import backends
from tests.gatewayproc import simulated_plan, wait_for

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from tests.conftest import Endpoint
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.fault


class DelayProxy:
    """TCP proxy to `upstream_port` that holds each request for `delay_s` before passing it on."""

    def __init__(self, upstream_port: int) -> None:
        self.delay_s = 0.0
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while self.running:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed by close()
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, upstream]
            # Set by each response; the client's next chunk then starts a new request.
            answered = threading.Event()
            answered.set()
            for source, sink, requests in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(
                    target=self._pump, args=(source, sink, requests, answered), daemon=True
                ).start()

    def _pump(
        self, source: socket.socket, sink: socket.socket, requests: bool, answered: threading.Event
    ) -> None:
        try:
            while data := source.recv(65536):
                if not requests:
                    answered.set()
                elif answered.is_set():
                    answered.clear()
                    if self.delay_s:
                        time.sleep(self.delay_s)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                sock.close()

    def close(self) -> None:
        self.running = False
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def sizes_over(gw: GatewayProcess, seconds: float) -> list[float]:
    """The batch size in use, sampled every 0.1 s for `seconds`."""
    samples: list[float] = []
    started = time.monotonic()

    def sample() -> bool:
        samples.append(gw.metrics()["gateway_batch_size"])
        return time.monotonic() - started >= seconds

    wait_for(sample, seconds + 10, f"{seconds} s of samples")
    return samples


@pytest.mark.soak
def test_batch_size_falls_when_writes_slow_and_recovers(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, run_id: str, tmp_path: Path
) -> None:
    """Writes delayed by 2 s (target 0.5 s) shrink the batch size to a quarter or less; without
    the delay it grows again; nothing times out or is lost."""
    db = backends.start_victoria_metrics(tmp_path / "vm")
    proxy = DelayProxy(db.port)
    try:
        gw = gateway(
            f'url = "http://127.0.0.1:{proxy.port}"\napi = "v2"\norg = "o"\nbucket = "b"',
            flush="batch_floor = 100\nbatch_initial = 100\nbatch_ceiling = 20000\n"
            "target_latency_s = 0.5\nlinger_s = 0.2\nmax_in_flight = 1\n",
        )
        count = 120_000
        plan = simulated_plan(mosquitto.port, run_id, count, 20, rate=6000)
        publisher = threading.Thread(target=simulate.run, args=(plan, None), daemon=True)
        publisher.start()
        fast = sizes_over(gw, 5)
        proxy.delay_s = 2.0
        slow = sizes_over(gw, 8)
        proxy.delay_s = 0.0
        recovered = sizes_over(gw, 5)
        publisher.join(timeout=60)
        wait_for(lambda: gw.readings("delivered") == count, 60, "every reading delivered")
        metrics = gw.metrics()
        assert max(fast) >= 300, f"grew while fast: {max(fast)}"
        assert slow[-1] <= max(fast) / 4, f"fell while slow: {max(fast)} -> {slow[-1]}"
        assert max(recovered) >= 4 * slow[-1], f"recovered: {slow[-1]} -> {max(recovered)}"
        assert metrics["gateway_writes_total{result=retry}"] <= 3
    finally:
        proxy.close()
        db.stop()
