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
from functools import partial

from gateway.sparkplug.core.payload import DataType, encode
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
    # Publish as a Sparkplug B edge node (this client id) with one device per device: an
    # NBIRTH, a DBIRTH of `per_message` metrics per device, then DDATA naming them by alias.
    sparkplug: bool = False
    # Above 0: readings of this many fields (`wide_values`) instead of the simulator's two.
    fields: int = 0
    # Milliseconds between a device's readings in reading time: 100 devices 100 ms apart are
    # 1,000 readings/s of reading time, however fast they are published.
    ts_step_ms: int = 1
    # The index of each device's first reading: a later phase of one run goes on from there.
    first_index: int = 0


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
    # A Sparkplug node's NBIRTH comes first and holds no reading.
    extra = 1 if load.sparkplug else 0
    acks = _AckReader(sock, replace(load, count=messages + extra))
    acks.start()
    make: _JsonMessages | _SparkplugMessages = _JsonMessages(load)
    if load.sparkplug:
        make = _SparkplugMessages(load)
        topic, payload = make.birth()
        acks.window.acquire()
        acks.sent_at[65535] = time.perf_counter()
        sock.sendall(_publish_packet(topic, 65535, payload))
    started = time.perf_counter()
    sent = 0
    per = load.per_message
    while sent < messages:
        if load.rate > 0 and (wait := started + sent * per / load.rate - time.perf_counter()) > 0:
            time.sleep(wait)
        burst = []
        for _ in range(min(BURST, messages - sent)):
            acks.window.acquire()
            topic, payload = make(sent)
            packet_id = sent % 65534 + 1
            acks.sent_at[packet_id] = time.perf_counter()
            burst.append(_publish_packet(topic, packet_id, payload))
            sent += 1
        sock.sendall(b"".join(burst))
    acks.join(timeout=120)
    elapsed = time.perf_counter() - started
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()
    return LoadResult(sent * per, elapsed, acks.latencies)


class _JsonMessages:
    """The simulator's readings as JSON, `per_message` to a message, round-robin by device."""

    def __init__(self, load: Load) -> None:
        self.load = load
        self.topics = [f"sensors/{device_name(k)}/telemetry".encode() for k in load.devices]

    def __call__(self, sent: int) -> tuple[bytes, bytes]:
        load, per = self.load, self.load.per_message
        k, i = sent % len(self.topics), load.first_index + sent // len(self.topics) * per
        make = partial(wide_values, fields=load.fields) if load.fields else values
        step = load.ts_step_ms
        items = [
            {"ts": load.start_ms + j * step, **make(load.devices[k], j)} for j in range(i, i + per)
        ]
        return self.topics[k], json.dumps(items[0] if per == 1 else items).encode()


def wide_values(k: int, i: int, fields: int) -> dict[str, float]:
    """Device k's reading i with `fields` fields: at 20, about 300 bytes as the buffer packs it."""
    base = values(k, i)["temp"]
    return {f"band{f:02}": round(base * 1.037 + f * 1.25, 3) for f in range(fields)}


class _SparkplugMessages:
    """An edge node's messages: its devices' DBIRTHs, then DDATA of `per_message` metrics."""

    GROUP = "bench"

    def __init__(self, load: Load) -> None:
        self.load = load
        node = f"spBv1.0/{self.GROUP}/{{}}/{load.client_id}"
        self.devices = [device_name(k) for k in load.devices]
        self.births = [f"{node.format('DBIRTH')}/{d}".encode() for d in self.devices]
        self.data = [f"{node.format('DDATA')}/{d}".encode() for d in self.devices]
        self.node_birth = node.format("NBIRTH").encode()

    def birth(self) -> tuple[bytes, bytes]:
        bd_seq = ("bdSeq", None, DataType.Int64, 0, None)
        return self.node_birth, encode(self.load.start_ms, [bd_seq], seq=0)

    def __call__(self, sent: int) -> tuple[bytes, bytes]:
        load, per = self.load, self.load.per_message
        k, i = sent % len(self.devices), sent // len(self.devices) * per
        seq = (sent + 1) % 256  # the NBIRTH had 0
        sample = values(load.devices[k], i)["temp"]
        if sent < len(self.devices):
            metrics = [
                (f"Line/Metric{m}", m, DataType.Double, sample + m, load.start_ms + i)
                for m in range(per)
            ]
            return self.births[k], encode(load.start_ms + i, metrics, seq=seq)
        by_alias: list[tuple[str | None, int, int | None, float, int]] = [
            (None, m, None, sample + m, load.start_ms + i) for m in range(per)
        ]
        return self.data[k], encode(load.start_ms + i, by_alias, seq=seq)
