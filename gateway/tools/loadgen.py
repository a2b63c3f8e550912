"""A lean MQTT 3.1.1 QoS 1 publisher for `gateway bench`, and only for it.

paho spends about as much CPU per publish as the gateway spends per reading, so on a small box
paho publishers, not the gateway, would set the measured rate. This one encodes PUBLISH packets
directly, writes them in bursts, keeps at most `inflight` unacknowledged, and times each PUBACK.
It publishes the simulator's payloads (`simulate.values`) so what it sends is what sensors send.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from dataclasses import dataclass, replace

from gateway.tools.simulate import device_name, values

CONNECT_TIMEOUT_S = 10
PUBACK = 0x40
BURST = 64


@dataclass(frozen=True, slots=True)
class LoadResult:
    """Messages published, elapsed time, and each message's PUBACK latency."""

    published: int
    elapsed_s: float
    puback_latencies_s: list[float]


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def _connect_packet(client_id: str, keepalive_s: int = 60) -> bytes:
    body = _string("MQTT") + bytes([4, 0x02]) + struct.pack(">H", keepalive_s) + _string(client_id)
    return b"\x10" + _remaining_length(len(body)) + body


def _publish_packet(topic: bytes, packet_id: int, payload: bytes) -> bytes:
    body = struct.pack(">H", len(topic)) + topic + struct.pack(">H", packet_id) + payload
    return b"\x32" + _remaining_length(len(body)) + body


@dataclass(frozen=True, slots=True)
class Load:
    """What to publish: `count` readings round-robin over `devices`; `rate` 0 means flat out."""

    host: str
    port: int
    client_id: str
    devices: range
    count: int
    rate: float = 0.0
    inflight: int = 1000
    start_ms: int = 1_700_000_000_000
    # Readings per message; above 1 the payload is a JSON array, as batching sensors send.
    per_message: int = 1


class _AckReader(threading.Thread):
    """Reads PUBACKs, frees in-flight slots, and records each message's latency."""

    def __init__(self, sock: socket.socket, load: Load) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.count = load.count
        self.window = threading.Semaphore(load.inflight)
        self.sent_at = [0.0] * 65536
        self.latencies: list[float] = []

    def run(self) -> None:
        buffer = b""
        while len(self.latencies) < self.count:
            chunk = self.sock.recv(65536)
            if not chunk:
                return
            buffer += chunk
            whole = len(buffer) // 4 * 4
            now = time.perf_counter()
            for offset in range(0, whole, 4):
                if buffer[offset] == PUBACK:
                    packet_id = struct.unpack_from(">H", buffer, offset + 2)[0]
                    self.latencies.append(now - self.sent_at[packet_id])
                    self.window.release()
            buffer = buffer[whole:]


def publish(load: Load) -> LoadResult:
    """Publish per `load` and wait for every PUBACK (at most two minutes)."""
    sock = socket.create_connection((load.host, load.port), timeout=CONNECT_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_connect_packet(load.client_id))
    if sock.recv(4)[:1] != b"\x20":
        raise ConnectionError("the broker refused the connection")
    messages = load.count // load.per_message
    acks = _AckReader(sock, replace(load, count=messages))
    acks.start()
    topics = [f"sensors/{device_name(k)}/telemetry".encode() for k in load.devices]
    started = time.perf_counter()
    sent = 0
    per = load.per_message
    while sent < messages:
        if load.rate > 0 and (wait := started + sent * per / load.rate - time.perf_counter()) > 0:
            time.sleep(wait)
        burst = []
        for _ in range(min(BURST, messages - sent)):
            acks.window.acquire()
            k, i = sent % len(topics), sent // len(topics) * per
            items = [
                {"ts": load.start_ms + j, **values(load.devices[k], j)} for j in range(i, i + per)
            ]
            payload = json.dumps(items[0] if per == 1 else items)
            packet_id = sent % 65535 + 1
            acks.sent_at[packet_id] = time.perf_counter()
            burst.append(_publish_packet(topics[k], packet_id, payload.encode()))
            sent += 1
        sock.sendall(b"".join(burst))
    acks.join(timeout=120)
    elapsed = time.perf_counter() - started
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    return LoadResult(sent * per, elapsed, acks.latencies)
