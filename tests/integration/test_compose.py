"""deploy/: its broker's logins and ACL under Debian's Mosquitto, and the compose stack whole.

The broker tests run Debian's `mosquitto` with deploy/mosquitto/mosquitto.conf (on a free port,
its data in a temporary directory) and the password and ACL files that the compose broker's
first-start script makes. The stack test needs a Docker engine with compose
(GATEWAY_TEST_SERVERS=docker); it binds the documented ports (1883, 8086, 9108, 9090, 3000),
so nothing else may hold them.
"""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.config import loader
from gateway.sparkplug.core.host import state_topic
from gateway.sparkplug.core.topic import command_topic
from gateway.tools import servers
from tests import backends
from tests.gatewayproc import wait_for
from tests.integration.test_v2_databases import flux_count

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from paho.mqtt.reasoncodes import ReasonCode

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).parents[2] / "deploy"
TOKEN = "compose-smoke-token-0123456789"
READINGS = 500
LAND_TIMEOUT_S = 180
DEADLINE_S = 10.0
GATEWAY_PASSWORD = "gateway-broker-password-5f3a"
# Logins the operator guide's one-liner would add: sensors by device id, Sparkplug nodes by node id.
LOGINS = {"dev-a": "pw-dev-a", "dev-b": "pw-dev-b", "node-a": "pw-node-a", "node-b": "pw-node-b"}


@dataclass
class Peer:
    """A paho client logged in (or refused) at the broker, with what it received."""

    client: mqtt.Client
    connack: list[ReasonCode] = field(default_factory=list)
    received: list[str] = field(default_factory=list)
    acks: dict[int, ReasonCode] = field(default_factory=dict)
    subscribed: threading.Event = field(default_factory=threading.Event)

    def publish(self, topic: str, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1 and return the broker's PUBACK reason."""
        info = self.client.publish(topic, b"1", qos=1, retain=retain)
        wait_for(lambda: info.mid in self.acks, DEADLINE_S, f"the PUBACK of {topic}")
        return self.acks[info.mid]

    def subscribe(self, *filters: str) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK."""
        self.subscribed.clear()
        self.client.subscribe([(f, 1) for f in filters])
        assert self.subscribed.wait(DEADLINE_S)

    def close(self) -> None:
        """Disconnect and stop paho's thread (which would otherwise reconnect forever)."""
        self.client.disconnect()
        self.client.loop_stop()

    def wait_for(self, topic: str) -> list[str]:
        """Everything received up to and with `topic`, once it came."""
        wait_for(lambda: topic in self.received, DEADLINE_S, f"{topic} at {self.client}")
        return self.received[: self.received.index(topic) + 1]


def connect(port: int, username: str | None, password: str | None = None) -> Peer:
    """A client of the broker on `port`, once the broker answered its CONNECT."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    peer = Peer(client)
    client.on_connect = lambda _c, _u, _f, code, _p: peer.connack.append(code)
    client.on_message = lambda _c, _u, message: peer.received.append(message.topic)
    client.on_publish = lambda _c, _u, mid, code, _p: peer.acks.__setitem__(mid, code)
    client.on_subscribe = lambda *_: peer.subscribed.set()
    if username is not None:
        client.username_pw_set(username, password)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        wait_for(lambda: peer.connack, DEADLINE_S, f"the CONNACK for {username}")
    finally:
        if not peer.connack or peer.connack[0].is_failure:
            peer.close()
    return peer


if TYPE_CHECKING:
    Login = Callable[[str | None, str | None], Peer]


@pytest.fixture
def login(deployed_broker: int) -> Iterator[Login]:
    """Connect to the deployed broker as a user; every client is closed after the test."""
    peers: list[Peer] = []

    def connect_as(username: str | None, password: str | None) -> Peer:
        peers.append(connect(deployed_broker, username, password))
        return peers[-1]

    yield connect_as
    for peer in peers:
        peer.close()


def accepts_tcp(port: int) -> bool:
    """Whether something listens on loopback `port`."""
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def deployed_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Debian's Mosquitto with the deploy's conf and the files its first-start script made."""
    workdir = tmp_path_factory.mktemp("deployed-broker")
    secret = workdir / "mqtt_gateway_password"
    secret.write_text(GATEWAY_PASSWORD + "\n")
    environ = {
        **os.environ,
        "MOSQUITTO_DATA": str(workdir),
        "GATEWAY_PASSWORD_FILE": str(secret),
        "ACL_TEMPLATE": str(DEPLOY / "mosquitto" / "acl.template"),
    }
    script = DEPLOY / "mosquitto" / "first-start.sh"
    subprocess.run(["sh", str(script)], env=environ, check=True, capture_output=True)
    passwd = workdir / "passwd"
    for username, password in LOGINS.items():
        subprocess.run(["mosquitto_passwd", "-b", str(passwd), username, password], check=True)
    port = servers.free_port()
    conf = workdir / "mosquitto.conf"
    text = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    conf.write_text(
        text.replace("listener 1883\n", f"listener {port} 127.0.0.1\n").replace(
            "/mosquitto/data/", f"{workdir}/"
        )
        # Stay this test's user: the deploy's broker drops root for its own user in the image.
        + f"user {getpass.getuser()}\n"
    )
    binary = servers.LOCAL.binary("mosquitto")
    broker = servers.LOCAL.spawn(
        "mosquitto", [binary, "-c", str(conf)], port, workdir, lambda: accepts_tcp(port)
    )
    try:
        yield port
    finally:
        broker.stop()


def test_the_deployed_broker_refuses_anonymous_clients_and_wrong_passwords(login: Login) -> None:
    """Only a login from the password file made at first start gets in."""
    for username, password in ((None, None), ("dev-a", "not-its-password"), ("x", "y")):
        (code,) = login(username, password).connack
        assert code.is_failure, (username, code)
    (code,) = login("gateway", GATEWAY_PASSWORD).connack
    assert not code.is_failure, code


def test_a_sensor_publishes_under_its_own_device_id_only(login: Login) -> None:
    """The gateway's login takes sensor A's reading, never one A forged under B's id."""
    gateway = login("gateway", GATEWAY_PASSWORD)
    subscriptions = loader.load(DEPLOY / "gateway.toml", {}).mqtt.subscriptions
    gateway.subscribe(*(sub.mqtt_filter for sub in subscriptions))
    sensor = login("dev-a", LOGINS["dev-a"])
    assert not sensor.publish("sensors/dev-a/temp").is_failure
    assert sensor.publish("sensors/dev-b/temp").is_failure  # Not authorized
    assert not sensor.publish("sensors/dev-a/hum").is_failure
    # One publisher's messages reach a subscriber in order: the last one closes the window.
    assert gateway.wait_for("sensors/dev-a/hum") == ["sensors/dev-a/temp", "sensors/dev-a/hum"]


def test_a_sparkplug_node_publishes_under_its_own_node_only(login: Login) -> None:
    """Node A's NBIRTH and its devices' data pass; its forged NDEATH of B and STATE do not."""
    gateway = login("gateway", GATEWAY_PASSWORD)
    gateway.subscribe("spBv1.0/#")
    node = login("node-a", LOGINS["node-a"])
    own = ["spBv1.0/line1/NBIRTH/node-a", "spBv1.0/line1/DDATA/node-a/press-1"]
    forged = [
        "spBv1.0/line1/NDEATH/node-b",
        "spBv1.0/line1/NBIRTH/node-b",
        "spBv1.0/line1/DDATA/node-b/press-1",
        state_topic("gateway-1"),
        "sensors/dev-a/temp",
    ]
    for topic in own:
        assert not node.publish(topic).is_failure, topic
    for topic in forged:
        assert node.publish(topic).is_failure, topic
    last = "spBv1.0/line1/NDATA/node-a"
    assert not node.publish(last).is_failure
    assert gateway.wait_for(last) == [*own, last]


def test_the_gateway_reads_all_and_a_device_reads_only_its_commands(login: Login) -> None:
    """`#` gives a device its own NCMD and the host's STATE, not others' data; the gateway all."""
    gateway = login("gateway", GATEWAY_PASSWORD)
    gateway.subscribe("#", "$SYS/broker/version")
    gateway.wait_for("$SYS/broker/version")
    node = login("node-a", LOGINS["node-a"])
    node.subscribe("#", "$SYS/#")
    sensor = login("dev-b", LOGINS["dev-b"])
    sensor.subscribe("#")
    assert not sensor.publish("sensors/dev-b/temp").is_failure
    other_node = login("node-b", LOGINS["node-b"])
    assert not other_node.publish("spBv1.0/line1/NDATA/node-b").is_failure
    assert not gateway.publish(command_topic("line1", "node-b")).is_failure
    assert not gateway.publish(state_topic("gateway-1"), retain=True).is_failure
    assert not gateway.publish(command_topic("line1", "node-a")).is_failure
    mine = command_topic("line1", "node-a")
    assert node.wait_for(mine) == [state_topic("gateway-1"), mine]
    assert gateway.wait_for(mine) == [
        "$SYS/broker/version",
        "sensors/dev-b/temp",
        "spBv1.0/line1/NDATA/node-b",
        command_topic("line1", "node-b"),
        state_topic("gateway-1"),
        mine,
    ]
    # Subscribed to `#` before any of it was sent, a sensor reads the host's STATE alone.
    assert sensor.wait_for(state_topic("gateway-1")) == [state_topic("gateway-1")]


def compose(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "compose", "-f", str(project / "compose.yaml"), "-p", "gateway-smoke", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )


def landed(run_id: str) -> int:
    flux = (
        'from(bucket: "telemetry") |> range(start: 0) '
        f'|> filter(fn: (r) => r.device =~ /^{run_id}/ and r._field == "temp") '
        "|> group() |> count()"
    )
    try:
        return flux_count("http://127.0.0.1:8086", "edge", TOKEN, flux)
    except OSError:
        return 0


def test_the_compose_stack_lands_readings(tmp_path: Path, run_id: str) -> None:
    """Sensors with logins added the guide's way publish; their readings land in InfluxDB."""
    if backends.BACKEND != "docker" or shutil.which("docker") is None:
        pytest.skip(f"needs a Docker engine with compose ({backends.BACKEND_ENV}=docker)")
    project = tmp_path / "deploy"
    shutil.copytree(DEPLOY, project)
    (project / "influx-token").write_text(TOKEN)
    (project / "influx-admin-password").write_text("compose-smoke-influx-admin")
    (project / "mqtt-gateway-password").write_text(GATEWAY_PASSWORD)
    (project / "grafana-admin-password").write_text("compose-smoke-grafana")
    # The build context is the repository, one level above deploy/.
    text = (project / "compose.yaml").read_text()
    (project / "compose.yaml").write_text(text.replace("context: ..", f"context: {DEPLOY.parent}"))
    up = compose(project, "up", "-d", "--build", "--wait")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        devices = [f"{run_id}-dev-{k}" for k in range(5)]
        for device in devices:
            added = compose(
                project,
                "exec",
                "-T",
                "mosquitto",
                "sh",
                "-c",
                f"mosquitto_passwd -b /mosquitto/data/passwd {device} pw-{device} && kill -HUP 1",
            )
            assert added.returncode == 0, added.stdout + added.stderr
        for device in devices:
            # The broker reads its password file again a moment after the SIGHUP.
            sensor = wait_for(
                lambda d=device: next(
                    (p for p in [connect(1883, d, f"pw-{d}")] if not p.connack[0].is_failure),
                    None,
                ),
                DEADLINE_S,
                f"the login of {device}",
            )
            assert isinstance(sensor, Peer)
            for i in range(READINGS // len(devices)):
                payload = json.dumps({"ts": 1_700_000_000_000 + i, "temp": 20.5}).encode()
                info = sensor.client.publish(f"sensors/{device}/telemetry", payload, qos=1)
                info.wait_for_publish(DEADLINE_S)
            sensor.close()
        wait_for(lambda: landed(run_id) >= READINGS, LAND_TIMEOUT_S, "the readings in InfluxDB")
        assert landed(run_id) == READINGS
    finally:
        compose(project, "down", "-v", "--remove-orphans")
