"""deploy/ and systemd/: checked with the tools made for them and against the exported metrics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway import cli
from gateway.config import loader
from gateway.config.sections import FlushSettings
from gateway.observe.brokerstats import BROKER_TOPICS
from gateway.observe.metrics import Metrics
from gateway.sparkplug.core.session import Limits, Sessions

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "gateway.json"
UNIT = ROOT / "systemd" / "gateway.service"
METRIC_NAME = re.compile(r"\b(?:gateway|process)_[a-z_]+\b")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip("promtool is not installed (scripts/setup --test installs it)")
    return subprocess.run([tool, *args], cwd=DEPLOY, capture_output=True, text=True, check=False)


def exported_names() -> set[str]:
    """Every sample name the gateway exports once each kind of event has happened."""
    metrics = Metrics()
    metrics.accounting.committed(
        accepted=1, invalid=0, refused={("shed", "t"): 1}, dropped={("shed", "t"): 1}
    )
    for topic in BROKER_TOPICS:
        metrics.broker.update(topic, b"1")
    metrics.lag_seconds.set(0)
    # A labelled counter shows its `_total` sample only once it has a child: a sink configured.
    metrics.sinks.skipped.labels("influx")
    metrics.disk.endurance_tbw = 1.0
    metrics.disk.day.add(0.0, 0)
    metrics.disk.day.add(3600.0, 1000)
    metrics.watch_sparkplug(Sessions(Limits(max_aliases=1, max_nodes=1, rebirth_interval_s=1)))
    names = set()
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    found = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    found += [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    return found


def test_alert_rules_and_scrape_config_pass_promtool() -> None:
    for args in (
        ("check", "rules", "alerts.yml"),
        ("check", "config", "prometheus.yml"),
        ("test", "rules", "alerts_test.yml"),
    ):
        result = promtool(*args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_in_alerts_and_dashboard_is_exported() -> None:
    """A renamed metric must not leave an alert that can never fire or an empty panel."""
    exported = exported_names()
    used = {name for expr in expressions() for name in METRIC_NAME.findall(expr)}
    assert used
    assert used - exported == set()


def test_every_alert_links_to_its_runbook_section_of_the_operator_guide() -> None:
    """Each rule's runbook_url is the installed guide's heading named after the alert."""
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    headings = {
        line.removeprefix("#### ").strip().lower()
        for line in (ROOT / "docs" / "operator-guide.md").read_text().splitlines()
        if line.startswith("#### ")
    }
    for rule in (r for group in rules["groups"] for r in group["rules"]):
        url = rule["annotations"]["runbook_url"]
        assert (
            url == f"file:///usr/share/doc/gateway/docs/operator-guide.md#{rule['alert'].lower()}"
        )
        assert rule["alert"].lower() in headings, rule["alert"]


def test_compose_file_follows_the_compose_spec() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), source


def test_the_compose_stack_is_fit_to_leave_running() -> None:
    """Pinned images, rotated logs, memory limits, loopback-only admin ports, an Alertmanager."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    for name, service in services.items():
        if "image" in service:
            tag = service["image"].rsplit(":", 1)[-1]
            assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin {service['image']}"
        assert service["logging"]["options"]["max-size"], name
        assert service["mem_limit"], name
        for port in service.get("ports", []):
            if name != "mosquitto":  # sensors reach the broker from the network
                assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
    grafana = services["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD__FILE"].startswith("/run/secrets/")
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "alertmanager" in services
    prometheus = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = prometheus["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets == ["alertmanager:9093"]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)
    kept_out = (ROOT / ".gitignore").read_text().split()
    assert {"deploy/influx-token", "deploy/grafana-admin-password"} <= set(kept_out)


def test_the_dashboard_fits_any_prometheus_and_many_boxes() -> None:
    """A datasource and an instance variable, no hard-coded uid or job, quantiles per box."""
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    assert instance["query"]["query"] == "label_values(gateway_build_info, instance)"
    assert instance["multi"] is True
    assert instance["includeAll"] is True
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert 'instance=~"$instance"' in target["expr"], panel["title"]
            assert 'job="' not in target["expr"]
            if "histogram_quantile" in target["expr"]:
                assert "by (instance, le)" in target["expr"], panel["title"]


# What each kind of series is measured in; a panel of one must say so.
UNIT_OF = {
    "_seconds": {"s"},
    "_bytes": {"bytes"},
    "fill_ratio": {"percentunit"},
    "process_cpu_seconds_total": {"percentunit"},
    "rate(gateway_readings": {"ops"},
}


def test_every_dashboard_panel_has_the_unit_of_what_it_draws() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    for panel in panels:
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert unit, f"{panel['title']} has no unit"
        for target in panel["targets"]:
            expr = target["expr"]
            if "process_cpu_seconds_total" in expr:
                assert unit == "percentunit", f"{panel['title']}: CPU is a share of a core"
                continue
            for marker, units in UNIT_OF.items():
                if marker in expr:
                    assert unit in units, f"{panel['title']}: {unit} for {marker}"
    kinds = {p["type"] for p in panels}
    assert kinds == {"stat", "timeseries"}
    stats = {p["title"] for p in panels if p["type"] == "stat"}
    assert {"Broker", "Intake", "Buffer fill", "Write-behind lag", "Dead letters held"} <= stats
    assert any("gateway_dead_letters" in t["expr"] for p in panels for t in p["targets"])


def test_systemd_unit_is_hardened_notify_and_verifies(tmp_path: Path) -> None:
    """The unit restarts on failure but not on a bad config, and holds its secrets and buffer."""
    text = UNIT.read_text()
    settings: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line and line[0] != "#":
            key, value = line.split("=", 1)
            settings[key] = f"{settings[key]} {value}" if key in settings else value
    assert settings["Type"] == "notify"
    # Workers get SIGTERM from their parent only: a second one would skip their flush.
    assert settings["KillMode"] == "mixed"
    assert int(settings["WatchdogSec"]) > 0
    assert int(settings["TimeoutStopSec"]) > FlushSettings().grace_s
    assert settings["RestartPreventExitStatus"] == str(cli.EXIT_CONFIG)
    assert settings["UMask"] == "0077"
    assert settings["LoadCredential"] == "gateway:/etc/gateway/credentials"
    assert settings["ExecStart"].startswith("/usr/bin/gateway run --config /etc/gateway/")
    for key in (
        "DynamicUser",
        "StateDirectory",
        "ConfigurationDirectory",
        "ProtectSystem",
        "ProtectHome",
        "NoNewPrivileges",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "LockPersonality",
        "SystemCallFilter",
        "SystemCallArchitectures",
        "CapabilityBoundingSet",
        "RestrictAddressFamilies",
        "MemoryMax",
        "Restart",
    ):
        assert key in settings, key
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "gateway.service"
    gateway = Path(sys.executable).parent / "gateway"
    unit.write_text(text.replace("/usr/bin/gateway", str(gateway)))
    # verify runs `man gateway` for Documentation=man:gateway(1): the page the package ships.
    (tmp_path / "man" / "man1").mkdir(parents=True)
    page = subprocess.run([gateway, "man"], capture_output=True, text=True, check=True).stdout
    (tmp_path / "man" / "man1" / "gateway.1").write_text(page)
    environ = {**os.environ, "MANPATH": str(tmp_path / "man")}
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, check=False, env=environ
    )
    assert result.returncode == 0, result.stdout + result.stderr
    security = subprocess.run(
        [analyze, "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    exposure = re.search(r"Overall exposure level for gateway.service: ([0-9.]+)", security.stdout)
    assert exposure is not None, security.stdout + security.stderr
    assert float(exposure.group(1)) <= 2.0, security.stdout  # "OK" or better
    assert security.returncode == 0, "--threshold=20 (2.0) was passed"


def mosquitto_settings(text: str) -> dict[str, list[str]]:
    """Each mosquitto.conf (or acl_file) keyword with the rest of every line that sets it."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.strip().partition(" ")
            settings.setdefault(key, []).append(value.strip())
    return settings


def test_the_compose_broker_wants_logins_obeys_an_acl_and_bounds_queues() -> None:
    """No anonymous client; logins and ACL on the data volume; each client's queue bounded."""
    conf = mosquitto_settings((DEPLOY / "mosquitto" / "mosquitto.conf").read_text())
    assert conf["allow_anonymous"] == ["false"]
    (data,) = conf["persistence_location"]
    assert conf["password_file"] == [f"{data}passwd"]
    assert conf["acl_file"] == [f"{data}acl"]
    (messages,) = conf["max_queued_messages"]
    (queued_bytes,) = conf["max_queued_bytes"]
    assert 0 < int(messages) <= 1_000_000
    assert 0 < int(queued_bytes) <= 128_000_000  # well under the container's 256 MB
    (expiration,) = conf["persistent_client_expiration"]
    assert re.fullmatch(r"\d+[hdwmy]", expiration)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    broker = compose["services"]["mosquitto"]
    assert broker["entrypoint"][-1] == "/mosquitto/config/first-start.sh"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in broker["volumes"]}
    assert mounts["/mosquitto/config/first-start.sh"] == "./mosquitto/first-start.sh"
    assert mounts["/mosquitto/config/acl.template"] == "./mosquitto/acl.template"
    assert mounts[data.rstrip("/")] == "mosquitto-data"
    assert broker["secrets"] == ["mqtt_gateway_password"]


def test_the_acl_lets_each_device_publish_only_what_the_gateway_reads_as_its_own() -> None:
    """A sensor writes under its own id where the deploy's subscription takes the device id."""
    text = (DEPLOY / "mosquitto" / "acl.template").read_text()
    acl = mosquitto_settings(text)
    # A `topic` line before the first `user` line would be a rule for anonymous clients.
    assert text.index("\ntopic ") > text.index("\nuser ")
    patterns = acl["pattern"]
    settings = loader.load(DEPLOY / "gateway.toml", {})
    for sub in settings.mqtt.subscriptions:
        levels = sub.topic.split("/")
        prefix = "/".join(levels[: levels.index("{device}")])
        assert f"write {prefix}/%u/#" in patterns, sub.topic
    assert "write spBv1.0/+/+/%u/#" in patterns
    assert "read spBv1.0/+/NCMD/%u" in patterns
    assert not [p for p in patterns if p.startswith(("read #", "readwrite", "write #"))]
    assert settings.mqtt.username == "gateway"
    assert acl["user"] == ["gateway"]
    assert "read #" in acl["topic"]


def test_no_secret_is_written_in_the_compose_file() -> None:
    """Passwords and tokens come from secret files; the gateway's token is not the admin's."""
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    secret_name = re.compile(r"PASSWORD|TOKEN|SECRET|KEY", re.IGNORECASE)
    for name, service in services.items():
        for key, value in service.get("environment", {}).items():
            if secret_name.search(key):
                assert key.endswith("_FILE"), f"{name}: {key} holds a secret in the file"
                assert str(value).startswith("/run/"), f"{name}: {key}"
    for secret in compose["secrets"].values():
        source = secret["file"].removeprefix("./")
        assert (DEPLOY / f"{source}.example").exists(), source
        assert f"deploy/{source}" in (ROOT / ".gitignore").read_text().split()
    influx = services["influxdb"]["environment"]
    assert "DOCKER_INFLUXDB_INIT_PASSWORD" not in influx
    assert influx["DOCKER_INFLUXDB_INIT_PASSWORD_FILE"] == "/run/secrets/influx_admin_password"
    admin_token = influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN_FILE"]
    gateway = services["gateway"]
    token_file = gateway["environment"]["GATEWAY__INFLUX__TOKEN_FILE"]
    assert token_file != admin_token
    assert "influx_token" not in gateway["secrets"]
    # The gateway's token is the one the init script writes, on a volume the gateway only reads.
    assert influx["GATEWAY_TOKEN_FILE"] == token_file
    token_dir = str(Path(token_file).parent)
    assert f"influx-gateway-token:{token_dir}:ro" in gateway["volumes"]
    assert f"influx-gateway-token:{token_dir}" in services["influxdb"]["volumes"]
    assert gateway["depends_on"]["influxdb"]["condition"] == "service_healthy"
    assert gateway["environment"]["GATEWAY__MQTT__PASSWORD_FILE"] == (
        "/run/secrets/mqtt_gateway_password"
    )


def as_user(
    uid: int, *command: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`command` run as user and group `uid`, with no other group."""
    ids = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    return subprocess.run(
        ["setpriv", *ids, *command], env=env, capture_output=True, text=True, check=False
    )


def test_the_token_script_asks_for_the_bucket_alone_and_hands_the_file_to_the_gateway() -> None:
    """`influx auth create` is asked for read and write on one bucket; run as InfluxDB's user
    in the directory compose makes, the token is readable by the gateway's user alone."""
    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as the images' users")
    script = DEPLOY / "influxdb" / "gateway-token.sh"
    assert os.access(script, os.X_OK)  # run-parts skips a script that is not executable
    ids = re.search(r"--uid (\d+) --gid (\d+)", (ROOT / "Dockerfile").read_text())
    assert ids is not None
    assert ids.groups() == ("10001", "10001")
    text = script.read_text()
    assert "GATEWAY_UID:-10001" in text
    assert "GATEWAY_GID:-10001" in text
    # A directory every user may enter, as the containers' volumes are to their users.
    shared = Path(tempfile.mkdtemp(prefix="token-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        # The influx CLI of the image, as far as this script sees it: its arguments, its JSON.
        fake = shared / "bin" / "influx"
        fake.parent.mkdir()
        fake.write_text(
            "#!/bin/sh\n"
            f'printf "%s\\n" "$@" > {shared}/args\n'
            'printf \'{\\n\\t"id": "0a1",\\n\\t"token": "tok_en-==",\\n\'\n'
            'printf \'\\t"status": "active"\\n}\\n\'\n'
        )
        fake.chmod(0o755)
        (shared / "args").touch()
        (shared / "args").chmod(0o666)
        # What compose's influx-gateway-token-dir runs, on the volume.
        compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
        made = compose["services"]["influx-gateway-token-dir"]
        assert made["user"] == "0:0"
        volume = shared / "run" / "influx-gateway"
        volume.parent.mkdir()
        subprocess.run([*made["entrypoint"][:-1], str(volume)], check=True)
        out = volume / "token"
        environ = {
            "PATH": f"{fake.parent}:{os.environ['PATH']}",
            "GATEWAY_TOKEN_FILE": str(out),
            "DOCKER_INFLUXDB_INIT_ORG_ID": "org1",
            "DOCKER_INFLUXDB_INIT_BUCKET_ID": "bucket1",
            "DOCKER_INFLUXDB_INIT_BUCKET": "telemetry",
        }
        as_user(1000, "sh", str(script), env=environ).check_returncode()  # InfluxDB's user
        assert (out.stat().st_gid, out.stat().st_mode & 0o777) == (10001, 0o440)
        assert as_user(10001, "cat", str(out)).stdout == "tok_en-==\n"
        denied = as_user(2000, "cat", str(out))
        assert denied.returncode != 0
        assert "tok_en" not in denied.stdout
        args = (shared / "args").read_text().splitlines()
    finally:
        shutil.rmtree(shared)
    assert args[:2] == ["auth", "create"]
    assert args[args.index("--read-bucket") + 1] == "bucket1"
    assert args[args.index("--write-bucket") + 1] == "bucket1"
    assert not {"--all-access", "--operator", "--read-buckets", "--write-buckets"} & set(args)
