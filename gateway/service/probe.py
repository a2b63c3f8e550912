"""`gateway check-config --connect`: reach the broker and the database as the service would.

Each check says OK or exactly why not, as one line an operator can act on. The broker is
reached with the configured TLS and login under a client id of its own with a clean session,
so a running gateway keeps its connection and its persistent session. The database gets a
ping, then a write of nothing: that asks for the same permission a real write does, and
stores no point.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiomqtt

from gateway.errors import SinkAuthError, SinkError, SinkRejected
from gateway.flush.sink import public_url
from gateway.flush.sinks import make_sink
from gateway.ingest.mqtt import make_client
from gateway.tls import describe as describe_tls_failure

if TYPE_CHECKING:
    from gateway.config.settings import Settings

# MQTT SUBACK reason codes from 0x80 on refuse the subscription (ACL, quota, bad filter).
SUBACK_REFUSED_MIN = 0x80


@dataclass(frozen=True, slots=True)
class Check:
    """One thing reached, or not."""

    what: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        """`OK   what: detail` or `FAIL what: detail`."""
        return f"{'OK  ' if self.ok else 'FAIL'} {self.what}: {self.detail}"


async def check_all(settings: Settings) -> list[Check]:
    """The broker's checks, then the database's."""
    return [*await check_broker(settings), *await check_database(settings)]


async def check_broker(settings: Settings) -> list[Check]:
    """Connect, log in and subscribe to each configured filter; leave no session behind."""
    m = settings.mqtt
    where = f"broker {m.host}:{m.port}{' (TLS)' if m.tls else ''}"
    probe = m.model_copy(
        update={"client_id": f"{m.client_id}-check-{os.getpid()}", "persistent_session": False}
    )
    checks = []
    try:
        async with make_client(probe) as client:
            login = f" as {m.username!r}" if m.username else " without a login"
            checks.append(Check(where, True, f"connected{login}"))
            for sub in m.subscriptions:
                # The filter the service subscribes to, shared subscription included.
                topic_filter = m.subscribe_filter(sub.mqtt_filter)
                granted = await _subscribe(client, topic_filter, min(sub.qos, 1))
                refused = granted >= SUBACK_REFUSED_MIN
                detail = f"refused (code {granted:#x})" if refused else f"granted QoS {granted}"
                checks.append(Check(f"subscription {topic_filter!r}", not refused, detail))
    except aiomqtt.MqttError as exc:
        tls = describe_tls_failure(exc)
        checks.append(Check(where, False, tls or str(exc)))
    return checks


async def _subscribe(client: aiomqtt.Client, topic_filter: str, qos: int) -> int:
    """The granted QoS or refusal code of one subscription, asked in a SUBSCRIBE of its own."""
    granted = await client.subscribe(topic_filter, qos=qos)
    first = granted[0] if granted else 0
    # MQTT 5 answers ReasonCode objects, 3.1.1 plain integers.
    return first if isinstance(first, int) else int(first.value)


# InfluxDB 3's answer to a write with no line, after the token and database were accepted.
EMPTY_WRITE = "incoming write was empty"


async def check_database(settings: Settings) -> list[Check]:
    """Ping the database, then write nothing to see the write is allowed."""
    i = settings.influx
    where = f"bucket {i.bucket!r}" if i.api == "v2" else f"database {i.database!r}"
    target = f"database {public_url(i.url)} ({i.api}, {where})"
    sink = make_sink(i)
    try:
        if not await sink.ready():
            return [Check(target, False, "no answer to GET /ping (down, wrong url or port)")]
        checks = [Check(target, True, "answers its ping")]
        try:
            await sink.write(b"")
        except SinkAuthError as exc:
            checks.append(Check("database write", False, f"not allowed: {exc}"))
        except SinkRejected as exc:
            # InfluxDB 3 refuses an empty body ("incoming write was empty") once it has let the
            # token write; the other databases take it. Any other refusal (a database name it
            # does not allow, say) would refuse every batch too.
            allowed = i.api == "v3" and EMPTY_WRITE in str(exc)
            detail = "the token may write (the empty write was refused as empty)"
            checks.append(Check("database write", allowed, detail if allowed else str(exc)))
        except SinkError as exc:
            checks.append(Check("database write", False, str(exc)))
        else:
            checks.append(Check("database write", True, "an empty write was accepted"))
        return checks
    finally:
        await sink.aclose()
