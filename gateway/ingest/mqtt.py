"""The one adapter around aiomqtt 2.x and paho-mqtt 2.x: every private hop the gateway makes.

aiomqtt 2.x lacks a few things the gateway depends on, and paho's per-message path cost most of
the gateway's CPU under load, so a `Connection` reaches into aiomqtt's paho client. Both
versions are pinned in pyproject.toml for that reason, and tests/unit/ingest/test_mqtt.py fails
loudly when an internal used here is missing. Each hop says why it is needed:

- manual acknowledgement (`_client.manual_ack_set`): aiomqtt 2.x has no public switch
  (empicano/aiomqtt#345); acks must wait for the commit (DESIGN invariant 1);
- the socket reader (`loop_read` and `_sock_recv` of paho's client replaced on the instance,
  `_packet_read` and `_loop_rc_handle` called): paho reads a packet with three or more system
  calls and builds a message, its properties and a callback lookup for it, a third of the CPU
  under load; the reader takes up to 64 KiB per call and parses PUBLISH packets itself
  (gateway/ingest/core/packets.py), handing every other packet to paho whole, so connection,
  subscription, keepalive and errors stay paho's;
- the inbox instead of aiomqtt's queue and iterator, woken once per read, and aiomqtt's
  `_disconnected` future to end a wait when the connection is lost (as its iterator does);
- all PUBACKs of a group commit in one packet write (`_packet_queue`), not one write each;
- leaving with a DISCONNECT queued as a plain write (`_state`, `_packet_queue`), so that the
  broker reads every PUBACK before the socket closes (see `Connection.leave`);
- speed-ups for what paho still parses (`install_speedups`): paho builds its property lookup
  tables anew for every packet (`Properties.__init__`), and every `MQTTMessage` makes an
  `MQTTMessageInfo` with a `threading.Condition` that only outgoing messages use. Both are
  replaced process-wide, once, by the service. Where paho changed, each speed-up (the socket
  reader too) falls back with a WARNING and the `gateway_mqtt_speedup_active` metric says so.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar, Self

import aiomqtt
import anyio
import paho.mqtt.client as mqtt
from paho.mqtt import __version__ as paho_version
from paho.mqtt import _packet
from paho.mqtt import client as paho_client
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.ingest.core.packets import Incoming, MalformedPacketError, cut_packets
from gateway.tls import client_context

if TYPE_CHECKING:
    from gateway.config.mqtt import MqttSettings
    from gateway.sparkplug.core.host import HostState

logger = logging.getLogger(__name__)

# Leaving a connection waits this long at most for the broker to close it.
LEAVE_TIMEOUT_S = 1.0
ACK_DRAIN_POLL_S = 0.001


def make_client(s: MqttSettings, will: aiomqtt.Will | None = None) -> aiomqtt.Client:
    """Aiomqtt's client for the configured broker, as `Connection` wraps it."""
    v5 = s.protocol == "5"
    properties = None
    if v5:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # With manual acks the broker stops sending once this many QoS 1 messages await our
        # PUBACK, which bounds the memory held while a commit is slow or paused.
        properties.ReceiveMaximum = s.receive_maximum
        if s.persistent_session:
            properties.SessionExpiryInterval = s.session_expiry_s
    return aiomqtt.Client(
        s.host,
        s.port,
        identifier=s.client_id,
        username=s.username,
        password=s.password.get_secret_value() if s.password else None,
        keepalive=s.keepalive_s,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        clean_session=None if v5 else not s.persistent_session,
        # paho refuses any clean_start but its default outside MQTT 5.
        clean_start=not s.persistent_session if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
        properties=properties,
        tls_context=client_context(s.tls) if s.tls is not None else None,
        # paho checks the host name itself unless told not to; the context says what we want.
        tls_insecure=None if s.tls is None else not s.tls.verify_hostname,
        will=will,
    )


async def end_session(s: MqttSettings) -> None:
    """End the broker's session of `s.client_id`, with whatever it still queues.

    A clean connect discards the old session (MQTT 3.1.1 clean session, MQTT 5 clean start),
    and without a session expiry the new one ends at disconnect.
    """
    async with Connection(s.model_copy(update={"persistent_session": False})):
        pass


class Connection:
    """One connection to the broker: aiomqtt's client, the socket reader and the inbox.

    Use as an async context manager, as aiomqtt's client; `client` is that client, for
    subscribing.
    """

    def __init__(self, settings: MqttSettings, host_state: HostState | None = None) -> None:
        """Set up manual acks and the read path before connecting.

        Both must be in place before CONNECT: a persistent session delivers queued messages
        right after CONNACK. `host_state`: announce the gateway as a Sparkplug B host
        application (its will says offline; `announce` says online, `leave` offline).
        """
        self._host_state = host_state
        will = None
        if host_state is not None:
            will = aiomqtt.Will(
                host_state.topic, host_state.payload(online=False), qos=1, retain=True
            )
        self.client = make_client(settings, will)
        self.inbox = Inbox()
        self._paho = paho = self.client._client  # noqa: SLF001
        paho.manual_ack_set(True)
        inbox = self.inbox

        def on_message(_client: object, _userdata: object, message: mqtt.MQTTMessage) -> None:
            # Only what the socket reader leaves to paho comes here (or everything, without it).
            inbox.put(from_paho(message))

        paho.on_message = on_message
        self._batched_acks = _READER_FITS
        self._reader = (
            SocketReader(paho, inbox, v5=settings.protocol == "5") if _READER_FITS else None
        )
        self._held: Any = None  # the socket whose reads are held

    async def __aenter__(self) -> Self:
        """Connect (aiomqtt's client does; see its errors)."""
        await self.client.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Disconnect, and let go of what was read and not taken."""
        try:
            await self.client.__aexit__(*exc_info)  # type: ignore[arg-type]
        finally:
            self._let_go()

    def _let_go(self) -> None:
        """Free the inbox now: its messages were not acknowledged, so the broker has them.

        aiomqtt's client and paho's refer to each other, and paho to the socket reader and
        `on_message`, which both hold the inbox: without this, a closed connection's unread
        messages stayed until the cycle collector's next full pass, which the service's
        collector thresholds make rare. At each resume of a paused intake the broker sends
        a burst of messages (tens of thousands in the long-outage bench), the next pause
        leaves them unread, and every pause and resume left one more such inbox, up to
        150 MB each.
        """
        self.inbox.messages.clear()
        self._paho.on_message = None
        self._held = None
        if self._reader is not None:
            self._reader.detach()

    async def next_message(self) -> Incoming:
        """Wait for the next message.

        Raises:
            aiomqtt.MqttError: the connection was lost meanwhile, as aiomqtt's iterator does.
        """
        inbox = self.inbox
        while (message := inbox.take()) is None:
            await inbox.wait(self.client._disconnected)  # noqa: SLF001
        return message

    def hold_reads(self) -> None:
        """Stop reading the socket as bytes arrive, until `release_reads`; `read_held` reads.

        While a commit window fills, reading each packet as it arrived cost an event-loop turn
        and a system call per message, most of the CPU at a few thousand messages a second.
        The bytes wait in the kernel instead and are read a window's poll at a time. Without
        the socket reader, nothing changes.
        """
        sock = self._paho._sock  # noqa: SLF001
        if self._reader is None or sock is None or self._held is not None:
            return
        asyncio.get_running_loop().remove_reader(sock.fileno())
        self._held = sock

    def read_held(self, until: int) -> None:
        """While reads are held, read until `until` messages wait or the socket is empty."""
        if self._held is not None and self._held is self._paho._sock and self._reader:  # noqa: SLF001
            try:
                self._reader.read_until(until)
            except Exception as exc:  # noqa: BLE001 - reported through the connection
                self._lost(exc)

    def release_reads(self) -> None:
        """Go back to reading as bytes arrive."""
        held, self._held = self._held, None
        sock = self._paho._sock  # noqa: SLF001
        if sock is not None and held is sock:  # not closed meanwhile
            asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)

    def _on_readable(self) -> None:
        """One read, as aiomqtt's own reader does (and what TLS has decrypted already)."""
        assert self._reader is not None  # noqa: S101 - only registered with the reader
        try:
            self._reader.read()
            sock = self._paho._sock  # noqa: SLF001
            while sock is not None and getattr(sock, "pending", lambda: 0)() > 0:
                self._reader.read()
        except Exception as exc:  # noqa: BLE001 - reported through the connection
            self._lost(exc)

    def _lost(self, exc: Exception) -> None:
        disconnected = self.client._disconnected  # noqa: SLF001
        if not disconnected.done():
            disconnected.set_exception(exc)

    def take_queued(self) -> Incoming | None:
        """The next message already read, without awaiting; None when there is none."""
        return self.inbox.take()

    def ack(self, pairs: list[tuple[int, int]]) -> None:
        """Acknowledge committed messages, in the order given: (packet id, QoS) of each.

        One write for all of them: a PUBACK of MQTT 3.1.1 and of MQTT 5 (success, no
        properties) is the same four bytes. QoS 0 needs none.
        """
        words = [_PUBACK_WORD | mid for mid, qos in pairs if qos == 1]
        if self._batched_acks and len(words) == len(pairs):
            if words:
                packet = struct.pack(f">{len(words)}I", *words)
                self._paho._packet_queue(PUBACK, packet, 0, 0)  # noqa: SLF001
            return
        for mid, qos in pairs:
            if qos:
                self._paho.ack(mid, qos)

    def announce(self) -> None:
        """Publish the Sparkplug B host application's online STATE, if it is one."""
        if self._host_state is not None:
            state = self._host_state
            self._paho.publish(state.topic, state.payload(online=True), qos=1, retain=True)

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        """Send (topic, payload) messages at QoS 0; queued by paho, written without awaiting."""
        for topic, payload in messages:
            self._paho.publish(topic, payload, qos=0)

    async def leave(self, timeout_s: float = LEAVE_TIMEOUT_S) -> None:
        """Write the queued PUBACKs and a DISCONNECT, then wait until the broker has closed.

        paho closes the socket as soon as its DISCONNECT is written; messages the broker sent
        meanwhile are then unread, the kernel answers with a reset, and the broker can lose
        the PUBACKs it had not read yet: committed messages came again (a commit's worth at
        each pause of intake). The broker closes the connection only after reading all of
        them (MQTT 3.14.4), and the socket is read until then. Without the socket reader,
        only the queued PUBACKs are waited for.
        """
        disconnected = self.client._disconnected  # noqa: SLF001
        if disconnected.done() or self._paho._sock is None:  # noqa: SLF001
            return
        if self._host_state is not None:
            # A clean DISCONNECT discards the will: the offline STATE goes out before it.
            state = self._host_state
            self._paho.publish(state.topic, state.payload(online=False), qos=1, retain=True)
        if self._batched_acks:
            # paho's own disconnect, but queued as a plain write so that paho does not close
            # the socket after writing it; reading the broker's close ends the connection.
            self._paho._state = _DISCONNECTING  # noqa: SLF001
            self._paho._packet_queue(PUBACK, DISCONNECT_PACKET, 0, 0)  # noqa: SLF001
            await asyncio.wait((disconnected,), timeout=timeout_s)
            return
        with anyio.move_on_after(timeout_s):
            # paho offers no event for an empty outgoing queue, so it is polled.
            while self._paho.want_write():  # noqa: ASYNC110
                await anyio.sleep(ACK_DRAIN_POLL_S)


# PUBACK: the packet type, a remaining length of 2, then the packet id (big-endian).
PUBACK = 0x40
_PUBACK_WORD = 0x4002_0000
# DISCONNECT with no reason code (normal disconnection in MQTT 5) and no properties.
DISCONNECT_PACKET = b"\xe0\x00"


def from_paho(message: mqtt.MQTTMessage) -> Incoming:
    """Paho's message as the gateway takes it."""
    stamped: float = message.timestamp
    return Incoming(
        message._topic,  # noqa: SLF001 - the bytes; `topic` would raise on a bad one
        bytes(message.payload),
        message.mid,
        message.qos,
        bool(message.dup),
        stamped if stamped > 0 else time.monotonic(),
    )


class Inbox:
    """Messages read and not yet taken, in arrival order, with one waiter at a time."""

    def __init__(self) -> None:
        """Empty."""
        self.messages: deque[Incoming] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        """How many messages wait."""
        return len(self.messages)

    def put(self, message: Incoming) -> None:
        """Add one message and wake the waiter."""
        self.messages.append(message)
        self.wake()

    def wake(self) -> None:
        """Wake the waiter, if any: messages were added."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def take(self) -> Incoming | None:
        """The oldest message, or None."""
        messages = self.messages
        return messages.popleft() if messages else None

    async def wait(self, disconnected: asyncio.Future[None]) -> None:
        """Until a message is added, or the connection is lost (raising aiomqtt.MqttError)."""
        if not self.messages:
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait((waiter, disconnected), return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._waiter = None
        if disconnected.done() and not self.messages:
            cause = None if disconnected.cancelled() else disconnected.exception()
            message = "Disconnected during message iteration"
            raise aiomqtt.MqttError(message) from cause


class SocketReader:
    """paho's read path for one client: 64 KiB per read, PUBLISH packets parsed here.

    Every other packet is handed to paho's own `_packet_read`, whole, through `_sock_recv`,
    so paho's state between packets is always "no packet begun".
    """

    def __init__(self, paho: mqtt.Client, inbox: Inbox, *, v5: bool) -> None:
        """Replace paho's `loop_read` and `_sock_recv` on this client."""
        self._paho = paho
        self._inbox = inbox
        self._v5 = v5
        self._recv = paho._sock_recv  # noqa: SLF001
        self._paho_packet_read = paho._packet_read  # noqa: SLF001
        self._sock: object = None
        self._rest = b""
        self._handed = b""
        self._rc = mqtt.MQTT_ERR_SUCCESS
        self.exhausted = False
        paho._sock_recv = self._serve_handed  # type: ignore[method-assign]  # noqa: SLF001
        paho.loop_read = self.read  # type: ignore[method-assign]

    def detach(self) -> None:
        """Give paho its own read path back, so that it no longer refers to this reader."""
        for name in ("_sock_recv", "loop_read"):
            vars(self._paho).pop(name, None)
        self._rest = self._handed = b""

    def read_until(self, count: int) -> None:
        """Read until `count` messages wait, the socket is empty or `READS_AT_ONCE` reads.

        Raises:
            Exception: whatever paho's handling of a packet raised (the connection is lost).
        """
        self.exhausted = False
        messages = self._inbox.messages
        for _ in range(READS_AT_ONCE):
            if len(messages) >= count:
                return
            if self.read() != mqtt.MQTT_ERR_SUCCESS or self.exhausted:
                return

    def read(self, max_packets: int = 1) -> MQTTErrorCode:  # noqa: ARG002 - paho's signature
        """What aiomqtt calls when the socket is readable: read once, cut, queue, wake."""
        paho = self._paho
        sock = paho._sock  # noqa: SLF001
        if sock is None:
            return mqtt.MQTT_ERR_NO_CONN
        if sock is not self._sock:  # a new connection starts with a new packet
            self._sock, self._rest = sock, b""
        try:
            chunk = self._recv(READ_BYTES)
        except BlockingIOError:
            self.exhausted = True
            return mqtt.MQTT_ERR_SUCCESS
        except OSError as exc:
            logger.debug("reading from the broker failed: %s", exc)
            chunk = b""
        if not chunk:
            return paho._loop_rc_handle(mqtt.MQTT_ERR_CONN_LOST)  # noqa: SLF001
        now = time.monotonic()
        # What paho's keepalive looks at; paho sets it under a lock that guards threads we
        # do not run.
        paho._last_bytes_received = now  # noqa: SLF001
        data = self._rest + chunk if self._rest else chunk
        self._rc = mqtt.MQTT_ERR_SUCCESS
        try:
            used = cut_packets(
                data,
                v5=self._v5,
                received_at=now,
                take=self._inbox.messages.append,
                hand_over=self._hand_over,
            )
        except MalformedPacketError as exc:
            logger.warning("the broker sent a malformed packet (%s); reconnecting", exc)
            used = len(data)
            self._rc = paho._loop_rc_handle(mqtt.MQTT_ERR_PROTOCOL)  # noqa: SLF001
        self._rest = data[used:]
        self._inbox.wake()
        return self._rc

    def _hand_over(self, packet: bytes) -> int:
        """Let paho read and handle one whole packet; its result code."""
        self._handed = packet
        rc = self._paho_packet_read()
        self._handed = b""
        if rc > 0:
            self._rc = self._paho._loop_rc_handle(rc)  # noqa: SLF001
        return int(rc)

    def _serve_handed(self, bufsize: int) -> bytes:
        """Paho's socket read, served from the packet handed to it."""
        served, self._handed = self._handed[:bufsize], self._handed[bufsize:]
        if not served:
            raise BlockingIOError
        return served


# One read of the socket takes at most this much (the kernel's buffer holds more) ...
READ_BYTES = 1 << 16
# ... and a poll of a filling commit window at most this many, so that it cannot starve the
# event loop.
READS_AT_ONCE = 16
# What the socket reader calls or replaces on paho's client.
_READER_HOOKS = ("_sock_recv", "_packet_read", "_loop_rc_handle", "_packet_queue", "loop_read")
_READER_FIELDS = ("_sock", "_last_bytes_received", "_state")
# The state paho's own disconnect sets, which makes the broker's close a clean one.
_DISCONNECTING: Any = getattr(
    getattr(paho_client, "_ConnectionState", None), "MQTT_CS_DISCONNECTING", None
)


def _reader_fits() -> bool:
    """Whether paho's client still has what the socket reader calls, replaces and sets."""
    try:
        probe = paho_client.Client(CallbackAPIVersion.VERSION2)
    except Exception:  # noqa: BLE001 - a changed constructor is a changed paho
        return False
    return (
        all(callable(getattr(probe, name, None)) for name in _READER_HOOKS)
        and all(hasattr(probe, name) for name in _READER_FIELDS)
        and _DISCONNECTING is not None
    )


_READER_FITS = _reader_fits()


# Private attributes paho's Properties keeps besides the property values themselves.
_TABLES = ("packetType", "types", "names", "properties")
_NO_PROPERTIES = b"\x00"


class _TemplateProperties(Properties):
    _templates: ClassVar[dict[int, dict[str, Any]]] = {}

    def __init__(self, packetType: int) -> None:  # noqa: N803 - paho's parameter name
        template = self._templates.get(packetType)
        if template is None:
            built = Properties(packetType)  # type: ignore[no-untyped-call]
            template = self._templates[packetType] = {k: built.__dict__[k] for k in _TABLES}
        # Straight into __dict__: paho's __setattr__ only admits these four names anyway.
        self.__dict__.update(template)

    def unpack(self, buffer: bytes) -> tuple[Properties, int]:
        if buffer[:1] == _NO_PROPERTIES:
            return self, 1
        result: tuple[Properties, int] = super().unpack(buffer)  # type: ignore[no-untyped-call]
        return result


# The slot's descriptor, which the property below shadows and stores through.
_INFO_SLOT: Any = vars(paho_client.MQTTMessage)["info"]
_MESSAGE_SLOTS = frozenset(paho_client.MQTTMessage.__slots__)


class _LazyInfoMessage(paho_client.MQTTMessage):
    __slots__ = ()

    def __init__(self, mid: int = 0, topic: bytes = b"") -> None:
        self.timestamp = 0.0
        self.state = paho_client.mqtt_ms_invalid
        self.dup = False
        self.mid = mid
        self._topic = topic
        self.payload = b""
        self.qos = 0
        self.retain = False
        self.properties = None

    @property
    def info(self) -> paho_client.MQTTMessageInfo:
        try:
            info: paho_client.MQTTMessageInfo = _INFO_SLOT.__get__(self)
        except AttributeError:
            info = paho_client.MQTTMessageInfo(self.mid)
            _INFO_SLOT.__set__(self, info)
        return info

    @info.setter
    def info(self, value: paho_client.MQTTMessageInfo) -> None:
        _INFO_SLOT.__set__(self, value)


_LAZY_SETS = frozenset(
    {"timestamp", "state", "dup", "mid", "_topic", "payload", "qos", "retain", "properties"}
)


def install_speedups() -> dict[str, bool]:
    """Put both speed-ups in place, for the whole process; which are active.

    Called once by the service before it connects. Where paho has changed, its own classes
    stay and a WARNING says which speed-up is lost: the gateway then works, slower (about a
    third more CPU per message for the first, 7 % for the second, as measured when written).
    """
    active = {"properties": True, "message_info": True, "socket_reader": _READER_FITS}
    current = getattr(_packet, "Properties", None)
    if current is not _TemplateProperties:
        if current is Properties:
            setattr(_packet, "Properties", _TemplateProperties)  # noqa: B010 - not public
        else:
            active["properties"] = False
    message = paho_client.MQTTMessage
    # The copy of __init__ above must set every slot paho's sets but `info`.
    if message is not _LazyInfoMessage:
        if {*_LAZY_SETS, "info"} == _MESSAGE_SLOTS:
            paho_client.MQTTMessage = _LazyInfoMessage  # type: ignore[misc]
        else:
            active["message_info"] = False
    for name, on in active.items():
        if not on:
            logger.warning(
                "paho-mqtt %s changed what the %s speed-up relies on; running without it "
                "(more CPU per message)",
                paho_version,
                name,
            )
    return active
