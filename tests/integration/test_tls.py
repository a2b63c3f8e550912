"""Secure transport against real servers: MQTT over TLS with logins and client certificates,
InfluxDB's API over HTTPS, the gateway's own HTTPS and bearer token, and no secret anywhere.

Certificates come from the openssl command, made fresh for the module.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from gateway.tools import servers
from tests import backends
from tests.gatewayproc import publish_messages, wait_for
from tests.integration.test_check_connect import connect_checks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from tests.conftest import InfluxV1
    from tests.gatewayproc import GatewayProcess

pytestmark = pytest.mark.integration

MQTT_PASSWORD = "mqtt-secret-5f1d2c"
INFLUX_TOKEN = "influx-token-8e7a91"
METRICS_TOKEN = "metrics-token-3b6c04"
START_MS = 1_700_000_000_000


def openssl(*args: str | Path, cwd: Path) -> None:
    subprocess.run(["openssl", *map(str, args)], cwd=cwd, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> Path:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return cert


def make_cert(directory: Path, ca: Path, name: str, san: str, usage: str) -> tuple[Path, Path]:
    key, csr, cert = (directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
    ext = directory / f"{name}.ext"
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n")
    openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca.with_suffix(".key"),
        "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext,
        cwd=directory,
    )  # fmt: skip
    return cert, key


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path
    server: tuple[Path, Path]
    wrong_host: tuple[Path, Path]
    client: tuple[Path, Path]


@dataclass(frozen=True)
class Broker:
    plain: int  # anonymous, for the test's publisher
    login: int  # TLS, username and password
    wrong_host: int  # TLS with a certificate for another host name
    client_cert: int  # TLS, the client's certificate is its login


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "test-ca")
    other = make_ca(directory, "other-ca")
    local = "DNS:localhost,IP:127.0.0.1"
    return Pki(
        ca=ca,
        other_ca=other,
        server=make_cert(directory, ca, "broker", local, "serverAuth"),
        wrong_host=make_cert(directory, ca, "elsewhere", "DNS:broker.example", "serverAuth"),
        client=make_cert(directory, ca, "gateway", "DNS:gateway", "clientAuth"),
    )


@pytest.fixture(scope="module")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    workdir = tmp_path_factory.mktemp("tls-broker")
    passwd = workdir / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwd), "gateway", MQTT_PASSWORD], check=True
    )
    ports = Broker(*(servers.free_port() for _ in range(4)))

    def tls_listener(port: int, cert: tuple[Path, Path]) -> str:
        return (
            f"listener {port} 127.0.0.1\ncafile {pki.ca}\ncertfile {cert[0]}\n"
            f"keyfile {cert[1]}\ntls_version tlsv1.2\n"
        )

    listeners = (
        tls_listener(ports.login, pki.server)
        + f"allow_anonymous false\npassword_file {passwd}\n"
        + tls_listener(ports.wrong_host, pki.wrong_host)
        + "allow_anonymous true\n"
        + tls_listener(ports.client_cert, pki.server)
        + "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
    )
    server = backends.start_mosquitto(workdir, ports.plain, more_listeners=listeners)
    try:
        yield ports
    finally:
        server.stop()


@pytest.fixture
def gateway_over_tls(
    gateway: Callable[..., GatewayProcess],
) -> Callable[..., GatewayProcess]:
    """Starts a gateway whose [mqtt] host, login and TLS table the test chooses."""

    def start_one(
        influx: str,
        port: int,
        tls: dict[str, Path | bool],
        *,
        host: str = "localhost",
        username: str | None = "gateway",
        password: str | None = MQTT_PASSWORD,
        env: dict[str, str] | None = None,
        metrics: str = "",
    ) -> GatewayProcess:
        keys = "".join(
            f"{k} = {json.dumps(v if isinstance(v, bool) else str(v))}\n" for k, v in tls.items()
        )
        subscriptions = (
            '[[mqtt.subscriptions]]\ntopic = "tls/{device}/{measurement}"\nqos = 1\n'
            f"[mqtt.tls]\n{keys}\n"
        )
        environment = dict(env or {})
        if password is not None:
            environment["GATEWAY__MQTT__PASSWORD"] = password
        return gateway(
            influx,
            subscriptions,
            mqtt_port=port,
            mqtt_extra=f'host = "{host}"\n' + (f'username = "{username}"\n' if username else ""),
            metrics_extra=metrics,
            env=environment,
            wait_connected=False,
        )

    return start_one


def readings(n: int) -> list[tuple[str, str]]:
    return [
        ("tls/dev-1/telemetry", json.dumps({"ts": START_MS + i, "temp": float(i)}))
        for i in range(n)
    ]


def test_tls_with_a_login_delivers(
    gateway_over_tls: Callable[..., GatewayProcess], broker: Broker, pki: Pki, influx: InfluxV1
) -> None:
    gw = gateway_over_tls(influx.config, broker.login, {"ca_file": pki.ca})
    wait_for(lambda: gw.get("/readyz")[0] == 200, 30, "the gateway to connect over TLS")
    publish_messages(broker.plain, readings(100))
    wait_for(lambda: influx.count() == 100, 30, "100 points")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong_ca", "the server's certificate was not accepted: self-signed certificate in"),
        ("wrong_host", "the server's certificate was not accepted: Hostname mismatch"),
        ("wrong_password", "refused the gateway's credentials"),
    ],
)
def test_tls_and_login_failures_are_named(
    gateway_over_tls: Callable[..., GatewayProcess],
    broker: Broker,
    pki: Pki,
    influx: InfluxV1,
    case: str,
    expected: str,
) -> None:
    port = broker.wrong_host if case == "wrong_host" else broker.login
    ca = pki.other_ca if case == "wrong_ca" else pki.ca
    password = "not-the-password" if case == "wrong_password" else MQTT_PASSWORD
    gw = gateway_over_tls(influx.config, port, {"ca_file": ca}, password=password)
    wait_for(lambda: expected in gw.log(), 30, f"the log to say {expected!r}")
    (line,) = [line for line in gw.log().splitlines() if expected in line][:1]
    assert f":{port}" in line, "the line names the broker's host and port"
    assert gw.get("/readyz")[0] == 503
    assert gw.get("/healthz")[0] == 200


def test_client_certificate_is_the_login(
    gateway_over_tls: Callable[..., GatewayProcess], broker: Broker, pki: Pki, influx: InfluxV1
) -> None:
    cert, key = pki.client
    gw = gateway_over_tls(
        influx.config,
        broker.client_cert,
        {"ca_file": pki.ca, "cert_file": cert, "key_file": key},
        username=None,
        password=None,
    )
    wait_for(lambda: gw.get("/readyz")[0] == 200, 30, "the gateway to connect with its cert")
    publish_messages(broker.plain, readings(10))
    wait_for(lambda: influx.count() == 10, 30, "10 points")


def test_https_database_https_metrics_and_no_secret_anywhere(
    gateway_over_tls: Callable[..., GatewayProcess],
    broker: Broker,
    pki: Pki,
    tmp_path: Path,
) -> None:
    """Writes go to VictoriaMetrics over HTTPS; the gateway serves HTTPS with a bearer token;
    the configured secrets appear in none of its logs, metrics, status or outputs."""
    db = backends.start_victoria_metrics(tmp_path / "vm", tls=pki.server)
    token_file = tmp_path / "metrics-token"
    token_file.write_text(METRICS_TOKEN + "\n")
    try:
        url = f"https://localhost:{db.port}"
        gw = gateway_over_tls(
            f'url = "{url}"\napi = "v2"\norg = "o"\nbucket = "b"\n'
            f'[influx.tls]\nca_file = "{pki.ca}"\n',
            broker.login,
            {"ca_file": pki.ca},
            env={"GATEWAY__INFLUX__TOKEN": INFLUX_TOKEN},
            metrics=(
                f'tls_cert_file = "{pki.server[0]}"\ntls_key_file = "{pki.server[1]}"\n'
                f'token_file = "{token_file}"\n'
            ),
        )
        context = ssl.create_default_context(cafile=str(pki.ca))
        base = gw.base_url.replace("http://127.0.0.1", "https://localhost")

        def get(path: str, token: str | None = None) -> tuple[int, str]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            request = urllib.request.Request(base + path, headers=headers)  # noqa: S310
            try:
                with urllib.request.urlopen(request, context=context, timeout=5) as response:  # noqa: S310
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        wait_for(lambda: get("/readyz", METRICS_TOKEN)[0] == 200, 30, "ready over TLS")
        publish_messages(broker.plain, readings(50))
        wait_for(
            lambda: (
                'gateway_readings_total{outcome="delivered"} 50.0'
                in get("/metrics", METRICS_TOKEN)[1]
            ),
            30,
            "50 points delivered over HTTPS",
        )
        assert get("/metrics")[0] == 401
        assert get("/metrics", "wrong")[0] == 401
        assert get("/readyz")[0] == 401
        assert get("/healthz")[0] == 200  # for container health checks, says nothing more
        exported = servers.victoria_export(url, 'telemetry_temp{device="dev-1"}', context=context)
        assert len(exported[0]["timestamps"]) == 50
        outputs = [gw.log_path.read_text(), get("/metrics", METRICS_TOKEN)[1]]
        commands = (["status", "--json"], ["rejects"], ["dead-letters", "list"], ["check-config"])
        outputs += [gw.cli(*command) for command in commands]
        for secret in (MQTT_PASSWORD, INFLUX_TOKEN, METRICS_TOKEN):
            assert not [o for o in outputs if secret in o], secret
    finally:
        db.stop()


def test_check_config_connect_logs_in_over_tls_with_systemd_credentials(
    broker: Broker, pki: Pki, influx: InfluxV1, tmp_path: Path, run_id: str
) -> None:
    """The password and CA come from $CREDENTIALS_DIRECTORY; a wrong password or host is named."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    shutil.copy(pki.ca, credentials / "gateway_broker-ca.pem")

    def connect(port: int, password: str) -> list[str]:
        (credentials / "gateway_mqtt-password").write_text(password + "\n")
        config = tmp_path / "gateway.toml"
        config.write_text(
            f'[mqtt]\nhost = "localhost"\nport = {port}\nclient_id = "gw-{run_id}"\n'
            'username = "gateway"\npassword_file = "gateway_mqtt-password"\n'
            '[[mqtt.subscriptions]]\ntopic = "tls/{device}/{measurement}"\n'
            '[mqtt.tls]\nca_file = "gateway_broker-ca.pem"\n'
            f'[buffer]\npath = "{tmp_path / "buffer"}"\n[influx]\n{influx.config}\n'
        )
        environ = {**os.environ, "CREDENTIALS_DIRECTORY": str(credentials)}
        result, lines = connect_checks(config, environ)
        assert MQTT_PASSWORD not in result.stdout + result.stderr
        return lines

    ok = connect(broker.login, MQTT_PASSWORD)
    assert ok[:2] == [
        f"OK   broker localhost:{broker.login} (TLS): connected as 'gateway'",
        "OK   subscription 'tls/+/+': granted QoS 1",
    ]
    (refused, *_) = connect(broker.login, "not-the-password")
    assert refused.startswith(f"FAIL broker localhost:{broker.login} (TLS): ")
    assert "authori" in refused.lower() or "password" in refused.lower(), refused
    (wrong_host, *_) = connect(broker.wrong_host, MQTT_PASSWORD)
    assert wrong_host.startswith(f"FAIL broker localhost:{broker.wrong_host} (TLS): ")
    assert "certificate" in wrong_host.lower(), wrong_host
