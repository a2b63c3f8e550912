"""An edge node built with pysparkplug, driven over stdin by tests/integration/test_sparkplug.py.

Runs in its own virtual environment (pysparkplug needs paho-mqtt 1.x; the gateway 2.x):
`scripts/setup --test` makes it. Arguments: host port group node device. Commands, one JSON
object a line: {"op": "data", "temperature": 21.5, "pressure": 1.2} publishes NDATA and DDATA
naming each metric by alias alone, as edge nodes do after their BIRTH; {"op": "skip"} uses up
a sequence number (the next message shows a gap); {"op": "unknown"} sends an alias no BIRTH
defined; {"op": "exit"}. Events on stdout, a JSON object a line: connected, rebirth (an NCMD
asked for one; the node answers by reconnecting, which publishes its NDEATH, NBIRTH, DBIRTH).
"""

import json
import queue
import sys
import threading

import pysparkplug as sp

host, port, group, node_id, device_id = sys.argv[1], int(sys.argv[2]), *sys.argv[3:6]
commands: queue.Queue = queue.Queue()


def say(event: str, **facts: object) -> None:
    print(json.dumps({"event": event, **facts}), flush=True)


def on_command(_node: sp.EdgeNode, message: sp.Message) -> None:
    for metric in message.payload.metrics:
        if metric.name == "Node Control/Rebirth" and metric.value:
            commands.put({"op": "rebirth"})


def now() -> int:
    return sp.get_current_timestamp()


node_metrics = [
    sp.Metric(
        timestamp=now(), name="Temperature", datatype=sp.DataType.DOUBLE, value=20.0, alias=1
    ),
    sp.Metric(timestamp=now(), name="Count", datatype=sp.DataType.INT32, value=-5, alias=2),
    sp.Metric(timestamp=now(), name="Status", datatype=sp.DataType.STRING, value="ok", alias=3),
    sp.Metric(
        timestamp=now(),
        name="Node Control/Rebirth",
        datatype=sp.DataType.BOOLEAN,
        value=False,
        alias=4,
    ),
]
device_metrics = [
    sp.Metric(timestamp=now(), name="Pressure", datatype=sp.DataType.FLOAT, value=1.0, alias=10),
    sp.Metric(timestamp=now(), name="Running", datatype=sp.DataType.BOOLEAN, value=True, alias=11),
]
node = sp.EdgeNode(group, node_id, node_metrics, cmd_callback=on_command)
node.register(sp.Device(device_id, device_metrics))


def by_alias(kind: sp.MessageType, payload_type: type, alias: int, datatype, value) -> None:
    """One metric named by its alias alone, on the node (NDATA) or its device (DDATA)."""
    metric = sp.Metric(timestamp=now(), name=None, datatype=datatype, value=value, alias=alias)
    device = device_id if kind == sp.MessageType.DDATA else None
    topic = sp.Topic(message_type=kind, group_id=group, edge_node_id=node_id, device_id=device)
    payload = payload_type(timestamp=now(), seq=node._seq, metrics=(metric,))
    node._client.publish(sp.Message(topic, payload, sp.QoS.AT_MOST_ONCE, False))


def read_stdin() -> None:
    for line in sys.stdin:
        commands.put(json.loads(line))
    commands.put({"op": "exit"})


node.connect(host, port=port, blocking=False)
say("connected")
threading.Thread(target=read_stdin, daemon=True).start()
while True:
    command = commands.get()
    op = command["op"]
    if op == "exit":
        break
    if op == "rebirth":
        say("rebirth")
        node.disconnect()
        node.connect(host, port=port, blocking=False)
        say("reborn")
    elif op == "data":
        by_alias(sp.MessageType.NDATA, sp.NData, 1, sp.DataType.DOUBLE, command["temperature"])
        by_alias(sp.MessageType.DDATA, sp.DData, 10, sp.DataType.FLOAT, command["pressure"])
        say("published")
    elif op == "skip":
        _ = node._seq
        say("skipped")
    elif op == "unknown":
        by_alias(sp.MessageType.NDATA, sp.NData, 99, sp.DataType.DOUBLE, 1.0)
        say("published")
node.disconnect()
say("disconnected")
