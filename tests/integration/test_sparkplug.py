"""Sparkplug B end to end: third-party edge nodes -> real Mosquitto -> gateway -> real influxd."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest

from gateway.sparkplug.core.payload import DataType, Payload, encode
from tests.gatewayproc import assert_identities, count, publish_messages, wait_for
from tests.sparkplug_clients.clients import pysparkplug_node, tahu_available, tahu_node

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from tests.conftest import Endpoint, InfluxV1
    from tests.gatewayproc import GatewayProcess
    from tests.sparkplug_clients.clients import EdgeNode

pytestmark = pytest.mark.integration

SUBSCRIPTION = """
[[mqtt.subscriptions]]
topic = "spBv1.0/{group}/#"
format = "sparkplug_b"
qos = 1

[sparkplug]
rebirth_interval_s = {interval}
"""


@pytest.fixture
def nodes() -> Iterator[list[EdgeNode]]:
    started: list[EdgeNode] = []
    yield started
    for node in started:
        node.close()


def start(
    gateway: Callable[..., GatewayProcess], influx: InfluxV1, group: str, interval: float = 30
) -> GatewayProcess:
    return gateway(
        influx.config, SUBSCRIPTION.format(group=group, interval=interval), metrics_extra=""
    )


def born_node(
    mosquitto: Endpoint, influx: InfluxV1, run_id: str, nodes: list[EdgeNode]
) -> EdgeNode:
    """Node edge1 with device pump, once its DBIRTH's Pressure is in the database."""
    node = pysparkplug_node(mosquitto.port, run_id, "edge1", "pump")
    nodes.append(node)
    wait_for(lambda: values(influx, "Pressure"), 20, "the DBIRTH's Pressure")
    return node


def values(influx: InfluxV1, measurement: str) -> list[tuple]:
    series = influx.query(f'SELECT "value", "group", "edge_node", "device" FROM "{measurement}"')
    return [tuple(row[1:]) for row in series[0]["values"]] if series else []


def field_types(influx: InfluxV1) -> dict[str, str]:
    series = influx.query("SHOW FIELD KEYS")
    return {s["name"]: s["values"][0][1] for s in series}


def test_birth_then_data_lands_named_and_typed(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
    nodes: list[EdgeNode],
) -> None:
    gw = start(gateway, influx, run_id)
    node = born_node(mosquitto, influx, run_id, nodes)
    node.send("data", temperature=21.5, pressure=1.25)
    wait_for(lambda: len(values(influx, "Pressure")) == 2, 20, "the DDATA's Pressure")
    wait_for(lambda: len(values(influx, "Temperature")) == 2, 20, "the NDATA's Temperature")
    assert [v[0] for v in values(influx, "Temperature")] == [20.0, 21.5]
    assert values(influx, "Temperature")[1][1:] == (run_id, "edge1", None)
    assert values(influx, "Pressure")[1] == (1.25, run_id, "edge1", "pump")
    assert values(influx, "Count")[0][0] == -5
    assert values(influx, "Status")[0][0] == "ok"
    assert values(influx, "Running")[0][0] is True
    assert field_types(influx) == {
        "Count": "integer",
        "Pressure": "float",
        "Running": "boolean",
        "Status": "string",
        "Temperature": "float",
    }
    online = gw.metrics()
    assert online[f"gateway_sparkplug_online{{device=,edge_node=edge1,group={run_id}}}"] == 1
    assert online[f"gateway_sparkplug_online{{device=pump,edge_node=edge1,group={run_id}}}"] == 1
    status, body = gw.get("/api/v1/sparkplug")
    assert status == 200
    (state,) = body["nodes"]
    assert (state["edge_node"], state["online"], state["metrics"]) == ("edge1", True, 4)
    assert [(d["device"], d["online"], d["metrics"]) for d in state["devices"]] == [
        ("pump", True, 2)
    ]
    # The broker publishes the will, the NDEATH with the bdSeq of the NBIRTH. (pysparkplug's
    # clean disconnect sends the next connection's bdSeq, which the gateway ignores as stale.)
    node.kill()
    wait_for(
        lambda: (
            gw.metrics()[f"gateway_sparkplug_online{{device=,edge_node=edge1,group={run_id}}}"] == 0
        ),
        20,
        "the node offline after its NDEATH",
    )
    assert (
        gw.metrics()[f"gateway_sparkplug_online{{device=pump,edge_node=edge1,group={run_id}}}"] == 0
    )
    assert gw.get("/api/v1/sparkplug")[1]["nodes"][0]["online"] is False
    assert count(gw, "gateway_sparkplug_rebirth_requests") == 0
    assert gw.readings("invalid") == 0
    assert_identities(gw)


def test_kill9_between_birth_and_data_still_decodes_the_data(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
    nodes: list[EdgeNode],
) -> None:
    gw = start(gateway, influx, run_id)
    node = pysparkplug_node(mosquitto.port, run_id, "edge1", "pump")
    nodes.append(node)
    wait_for(lambda: values(influx, "Pressure") and values(influx, "Temperature"), 20, "the BIRTHs")
    gw.kill()
    gw.start()
    node.send("data", temperature=30.5, pressure=2.5)
    wait_for(lambda: len(values(influx, "Pressure")) == 2, 20, "the DDATA after the restart")
    wait_for(lambda: len(values(influx, "Temperature")) == 2, 20, "the NDATA after the restart")
    assert values(influx, "Pressure")[1][0] == 2.5
    assert values(influx, "Temperature")[1][0] == 30.5
    # Decoded with the alias map the buffer kept: no rebirth was asked for.
    assert count(gw, "gateway_sparkplug_rebirth_requests") == 0
    assert "rebirth" not in node.seen
    assert gw.readings("invalid") == 0


def test_unknown_alias_and_seq_gap_each_ask_one_rebirth_that_the_node_answers(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
    nodes: list[EdgeNode],
) -> None:
    gw = start(gateway, influx, run_id)
    first = pysparkplug_node(mosquitto.port, run_id, "edge1", "pump")
    second = pysparkplug_node(mosquitto.port, run_id, "edge2", "pump")
    nodes.extend([first, second])
    wait_for(lambda: len(values(influx, "Pressure")) == 2, 20, "both DBIRTHs")
    births = gw.readings("accepted")  # 3 of each node, 2 of each device

    first.send("unknown")
    first.expect("reborn")
    # The births repeat the metrics' timestamps (one point each in InfluxDB): counted here.
    wait_for(lambda: gw.readings("accepted") == births * 3 / 2, 20, "the answering BIRTHs")
    assert count(gw, "gateway_readings_invalid", reason="sparkplug_unknown_alias") == 1
    assert count(gw, "gateway_sparkplug_rebirth_requests") == 1
    # Again within [sparkplug] rebirth_interval_s: refused and counted, not asked again.
    first.send("unknown")
    wait_for(
        lambda: count(gw, "gateway_readings_invalid", reason="sparkplug_unknown_alias") == 2,
        20,
        "the second unknown alias",
    )
    assert count(gw, "gateway_sparkplug_rebirth_requests") == 1

    second.send("skip")
    second.expect("skipped")
    second.send("data", temperature=40.0, pressure=4.0)
    second.expect("reborn")
    assert count(gw, "gateway_readings_invalid", reason="sparkplug_seq_gap") == 1
    assert count(gw, "gateway_sparkplug_rebirth_requests") == 2
    # The DDATA after the refused NDATA is in sequence again and lands, with the births.
    wait_for(lambda: gw.readings("accepted") == births * 2 + 1, 20, "the second node's rebirth")
    wait_for(lambda: 4.0 in [v[0] for v in values(influx, "Pressure")], 20, "the DDATA")
    assert 40.0 not in [v[0] for v in values(influx, "Temperature")]
    assert (first.seen.count("rebirth"), second.seen.count("rebirth")) == (1, 1)
    assert_identities(gw)


def deep_template(depth: int) -> bytes:
    message = Payload(timestamp=1, seq=1)
    template = message.metrics.add(name="t", alias=1, datatype=DataType.Template).template_value
    for _ in range(depth):
        template = template.metrics.add(name="t", datatype=DataType.Template).template_value
    return message.SerializeToString()


def test_hostile_payloads_are_counted_invalid_and_the_gateway_keeps_running(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    gw = start(gateway, influx, run_id)
    prefix = f"spBv1.0/{run_id}"
    huge_birth = encode(1, [(f"m{i}", i, DataType.Double, 1.0, None) for i in range(5000)], seq=0)
    publish_messages(
        mosquitto.port,
        [
            (f"{prefix}/NBIRTH/bad", b"\xff\xff\xff\xff"),
            (f"{prefix}/NDATA/bad", deep_template(500)),
            (f"{prefix}/NDATA/bad", b"\x12\x00" * 100_000),
            (f"{prefix}/NBIRTH/bad", huge_birth),
            (f"{prefix}/NOPE/bad", b""),
        ],
    )
    wait_for(lambda: gw.readings("invalid") == 5, 20, "five refused messages")
    assert count(gw, "gateway_readings_invalid", reason="sparkplug_bad_protobuf") == 2
    assert count(gw, "gateway_readings_invalid", reason="too_many_readings") == 2
    assert count(gw, "gateway_readings_invalid", reason="sparkplug_bad_topic") == 1
    # Still taking readings, and no state was kept for the refused BIRTHs.
    good = encode(time.time_ns() // 1_000_000, [("ok", 1, DataType.Int64, 7, None)], seq=0)
    publish_messages(mosquitto.port, [(f"{prefix}/NBIRTH/good", good)])
    wait_for(lambda: values(influx, "ok"), 20, "a good BIRTH after the hostile ones")
    assert [n["edge_node"] for n in gw.get("/api/v1/sparkplug")[1]["nodes"]] == ["good"]
    assert_identities(gw)


@pytest.mark.skipif(
    not tahu_available(), reason="Node.js or the npm sparkplug-client is not installed"
)
def test_tahu_javascript_edge_node_lands_and_answers_a_rebirth(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
    nodes: list[EdgeNode],
) -> None:
    gw = start(gateway, influx, run_id)
    node = tahu_node(mosquitto.port, run_id, "tahu1", "sensor")
    nodes.append(node)
    wait_for(lambda: values(influx, "Humidity"), 20, "the DBIRTH's Humidity")
    node.send("data", temperature=19.5, humidity=55.0)
    wait_for(lambda: len(values(influx, "Humidity")) == 2, 20, "the DDATA's Humidity")
    assert values(influx, "Humidity")[1] == (55.0, run_id, "tahu1", "sensor")
    wait_for(lambda: len(values(influx, "Temperature")) == 2, 20, "the NDATA's Temperature")
    assert values(influx, "Temperature")[1][0] == 19.5
    assert field_types(influx)["Count"] == "integer"
    assert values(influx, "Count")[0][0] == -7
    node.send("compressed", temperature=18.25, humidity=57.5)
    wait_for(lambda: len(values(influx, "Humidity")) == 3, 20, "the GZIP-compressed DDATA")
    wait_for(lambda: len(values(influx, "Temperature")) == 3, 20, "the DEFLATE-compressed NDATA")
    assert (values(influx, "Temperature")[2][0], values(influx, "Humidity")[2][0]) == (18.25, 57.5)
    node.send("unknown")
    node.expect("reborn")
    assert count(gw, "gateway_sparkplug_rebirth_requests") == 1
    assert gw.readings("invalid") == 1


class StateWatcher:
    """A plain MQTT client that keeps every STATE message of one host application."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[dict] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"watch-{topic}")
        self.client.on_message = lambda _c, _u, m: self.messages.append(json.loads(m.payload))
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_host_application_state_is_online_while_connected_and_offline_after(
    gateway: Callable[..., GatewayProcess], mosquitto: Endpoint, influx: InfluxV1, run_id: str
) -> None:
    config = SUBSCRIPTION.format(group=run_id, interval=30) + f'host_id = "{run_id}"\n'
    gw = gateway(influx.config, config)
    watcher = StateWatcher(mosquitto.port, f"spBv1.0/STATE/{run_id}")

    def states() -> list[dict]:
        # The same message twice in a row says nothing new (the gateway may answer the
        # retained offline message it finds at a restart while it announces itself anyway).
        seen = list(watcher.messages)
        return [m for i, m in enumerate(seen) if i == 0 or m != seen[i - 1]]

    try:
        # Retained: a node that connects later learns the host is online.
        wait_for(states, 20, "the retained online STATE")
        first = states()[0]
        assert first["online"] is True
        gw.kill()  # the broker publishes the will
        wait_for(lambda: len(states()) >= 2, 20, "the will's offline STATE")
        assert states()[1] == {"online": False, "timestamp": first["timestamp"]}
        gw.start()
        wait_for(lambda: len(states()) >= 3, 20, "online again after the restart")
        online = states()[2]
        assert online["online"] is True
        assert online["timestamp"] > first["timestamp"]
        # A late will of an old connection (or another client) says offline while the gateway
        # is up: it says online again, with its connection's timestamp.
        stale = {"online": False, "timestamp": first["timestamp"]}
        publish_messages(mosquitto.port, [(f"spBv1.0/STATE/{run_id}", json.dumps(stale))])
        wait_for(lambda: len(states()) >= 5, 20, "online again after a stale offline")
        assert states()[3:5] == [stale, online]
        assert gw.stop() == 0  # a clean stop says offline itself
        wait_for(lambda: len(states()) >= 6, 20, "the offline STATE of a clean stop")
        assert states()[5:] == [{"online": False, "timestamp": online["timestamp"]}]
    finally:
        watcher.close()


def test_a_spoofed_ndeath_is_refused_and_a_rogue_nbirth_is_counted(
    gateway: Callable[..., GatewayProcess],
    mosquitto: Endpoint,
    influx: InfluxV1,
    run_id: str,
    nodes: list[EdgeNode],
) -> None:
    """Handcrafted messages from another client: the node stays online, the operator sees both."""
    gw = start(gateway, influx, run_id)
    node = born_node(mosquitto, influx, run_id, nodes)
    gauge = f"gateway_sparkplug_online{{device=,edge_node=edge1,group={run_id}}}"
    bd_seq = gw.get("/api/v1/sparkplug")[1]["nodes"][0]["bd_seq"]  # type: ignore[index]
    topic = f"spBv1.0/{run_id}/NDEATH/edge1"
    now_ms = time.time_ns() // 1_000_000
    other_bd_seq = [("bdSeq", None, DataType.Int64, (bd_seq + 1) % 256, None)]
    publish_messages(
        mosquitto.port, [(topic, encode(now_ms, [])), (topic, encode(now_ms, other_bd_seq))]
    )
    wait_for(lambda: count(gw, "gateway_sparkplug_refused") == 2, 20, "both NDEATHs refused")
    assert count(gw, "gateway_sparkplug_refused", reason="ndeath_without_bdseq") == 1
    assert count(gw, "gateway_sparkplug_refused", reason="ndeath_stale_bdseq") == 1
    assert gw.metrics()[gauge] == 1
    status, body = gw.get("/api/v1/sparkplug")
    assert status == 200
    assert body["nodes"][0]["online"] is True  # type: ignore[index]
    assert f"Sparkplug NDEATH of '{run_id}/edge1' refused (ndeath_without_bdseq)" in gw.log()

    # Another client's NBIRTH gives alias 1 another name: taken (the specification), counted.
    rogue = encode(
        now_ms,
        [
            ("bdSeq", None, DataType.Int64, bd_seq, None),
            ("Rogue", 1, DataType.Double, 0.0, None),
        ],
        seq=200,
    )
    publish_messages(mosquitto.port, [(f"spBv1.0/{run_id}/NBIRTH/edge1", rogue)])
    wait_for(
        lambda: count(gw, "gateway_sparkplug_alias_changes") == 1, 20, "the alias change counted"
    )
    assert f"Sparkplug NBIRTH '{run_id}/edge1': a BIRTH while online redefines 1 metrics" in (
        gw.log()
    )
    # The node's next message is out of the rogue's sequence: a rebirth restores its table.
    node.send("data", temperature=22.5, pressure=1.5)
    node.expect("reborn")
    wait_for(lambda: count(gw, "gateway_sparkplug_alias_changes") == 2, 20, "the node's own NBIRTH")
    node.send("data", temperature=23.5, pressure=1.75)
    wait_for(lambda: 23.5 in [v[0] for v in values(influx, "Temperature")], 20, "the NDATA")
    assert gw.metrics()[gauge] == 1
    assert_identities(gw)
