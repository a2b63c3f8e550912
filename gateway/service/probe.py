"""`gateway check-config --connect`: reach the broker and the database as the service would.

Each check says OK or exactly why not, as one line an operator can act on. The broker is
reached with the configured TLS and login under a client id of its own with a clean session,
so a running gateway keeps its connection and its persistent session. Each database (every
`[[sinks]]` table) gets a ping, then a write of nothing: that asks for the same permission a
real write does, and stores no point. One sink that fails fails the check, under its name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiomqtt
import anyio

from gateway.errors import SinkAuthError, SinkError, SinkRejected
from gateway.flush.sink import public_url
from gateway.flush.sinks import make_sink
from gateway.ingest.mqtt import make_client
from gateway.tls import describe as describe_tls_failure

if TYPE_CHECKING:
    from gateway.config.sections import InfluxSettings
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
    """Each sink's checks, in the order configured; all sinks are reached at once.

    Given as `[[sinks]]`, each line names its sink; `[influx]` is one database, named as before.
    """
    sinks = settings.resolved_sinks()
    named = bool(settings.sinks)
    found: list[list[Check]] = [[] for _ in sinks]

    async def check(index: int) -> None:
        label = f"sink {sinks[index].name!r}: " if named else ""
        found[index] = await check_sink(sinks[index].influx, label)

    async with anyio.create_task_group() as tg:
        for index, sink in enumerate(sinks):
            tg.start_soon(check, index, name=f"gateway.probe.{sink.name}")
    return [each for checks in found for each in checks]


async def check_sink(influx: InfluxSettings, label: str = "") -> list[Check]:
    """Ping one database, then write nothing to see the write is allowed.

    `label` starts what each check names (`sink 'far': `).
    """
    where = f"bucket {influx.bucket!r}" if influx.api == "v2" else f"database {influx.database!r}"
    target = f"{label}database {public_url(influx.url)} ({influx.api}, {where})"
    write = f"{label}database write"
    sink = make_sink(influx)
    try:
        if not await sink.ready():
            return [Check(target, False, "no answer to GET /ping (down, wrong url or port)")]
        checks = [Check(target, True, "answers its ping")]
        try:
            await sink.write(b"")
        except SinkAuthError as exc:
            checks.append(Check(write, False, f"not allowed: {exc}"))
        except SinkRejected as exc:
            # InfluxDB 3 refuses an empty body ("incoming write was empty") once it has let the
            # token write; the other databases take it. Any other refusal (a database name it
            # does not allow, say) would refuse every batch too.
            allowed = influx.api == "v3" and EMPTY_WRITE in str(exc)
            detail = "the token may write (the empty write was refused as empty)"
            checks.append(Check(write, allowed, detail if allowed else str(exc)))
        except SinkError as exc:
            checks.append(Check(write, False, str(exc)))
        else:
            checks.append(Check(write, True, "an empty write was accepted"))
        return checks
    finally:
        await sink.aclose()
