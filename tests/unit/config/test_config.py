"""Configuration: the contract file loads, mistakes are named, secrets stay secret."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from gateway import cli
from gateway.buffer.core.admission import Lane, Policy, rules_of
from gateway.config import advice
from gateway.config import loader as config
from gateway.errors import ConfigError

CONFIG_DIR = Path(__file__).parents[3] / "config"
MINIMAL = (CONFIG_DIR / "minimal.toml").read_text()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.load(write(tmp_path, text), environ or {})
    return info.value.problems


EXAMPLES = [*CONFIG_DIR.glob("*.toml"), *(CONFIG_DIR.parent / "deploy").glob("**/*.toml")]


@pytest.mark.parametrize("path", sorted(EXAMPLES), ids=lambda p: p.name)
def test_every_example_config_loads(path: Path) -> None:
    """Each file in config/ and deploy/ is a valid configuration."""
    assert config.load(path, {}).mqtt.subscriptions


def test_minimal_contract_file_loads_with_defaults(tmp_path: Path) -> None:
    """The minimal file of the contract loads and takes the documented defaults."""
    settings = config.load(write(tmp_path, MINIMAL), {})
    assert settings.influx.api == "v1"
    assert settings.influx.database == "telemetry"
    assert settings.buffer.capacity == 1 << 30
    assert settings.buffer.sync == "commit"
    assert settings.mqtt.persistent_session is True
    assert settings.metrics.host_port == ("127.0.0.1", 9108)
    assert settings.mqtt.subscriptions[0].template.mqtt_filter == "sensors/+/+"


def test_misspelt_key_is_named(tmp_path: Path) -> None:
    """An unknown key is an error naming its full path, and the nearest key of its section."""
    assert problems(tmp_path, MINIMAL.replace("capacity =", "capacty =")) == [
        "buffer.capacty: unknown key; did you mean 'capacity'?"
    ]


def test_a_misspelt_key_in_a_list_item_gets_the_nearest_key_of_the_item(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[mqtt.subscriptions]]\ntopc = "x/{device}/{measurement}"\n'
    found = [p for p in problems(tmp_path, text) if "topc" in p]
    assert found == ["mqtt.subscriptions.1.topc: unknown key; did you mean 'topic'?"]
    assert problems(tmp_path, MINIMAL.replace("capacity =", "zzzzzz =")) == [
        "buffer.zzzzzz: unknown key"
    ], "no suggestion when nothing is near"


@pytest.mark.parametrize(
    "url",
    ["http://:99999/x y", "http://:8086", "http://host:99999", "http://host:8086/?db=x", "ftp://h"],
)
def test_a_malformed_database_url_is_refused(tmp_path: Path, url: str) -> None:
    settings = config.load(write(tmp_path, MINIMAL), {})
    text = MINIMAL.replace(f'url = "{settings.influx.url}"', f'url = "{url}"')
    assert text != MINIMAL
    (problem,) = problems(tmp_path, text)
    assert problem.startswith("influx.url: ")


def test_an_error_in_an_environment_override_names_the_variable(tmp_path: Path) -> None:
    (problem,) = problems(tmp_path, MINIMAL, {"GATEWAY__MQTT__PORT": '"many"'})
    assert problem.startswith("mqtt.port: Input should be a valid integer")
    assert problem.endswith(" (from GATEWAY__MQTT__PORT)")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("qos = 1", "qos = 3"), "mqtt.subscriptions.0.qos: Input should be 0, 1 or 2"),
        (
            ('topic = "sensors/{device}/{measurement}"', 'topic = "sensors/+/{measurement}"'),
            "mqtt.subscriptions.0.topic: level '+': use a named placeholder",
        ),
        (
            ('topic = "sensors/{device}/{measurement}"', 'topic = "sensors/{measurement}"'),
            "mqtt.subscriptions.0.topic: topic template needs a {device} level",
        ),
        (('database = "telemetry"', ""), "influx: api 'v1' needs database"),
        (('capacity = "1GiB"', 'capacity = "lots"'), "buffer.capacity: could not parse value"),
        (('listen = "127.0.0.1:9108"', 'listen = "9108"'), "metrics.listen: must be HOST:PORT"),
        (
            ('listen = "127.0.0.1:9108"', 'listen = "127.0.0.1:9108"\nmax_loop_lag_s = 30'),
            (
                "metrics.max_loop_lag_s: must be more than 0 and less than 30 s (the systemd "
                "watchdog's interval), so that /healthz reports a stall before the watchdog"
            ),
        ),
        (
            ('listen = "127.0.0.1:9108"', 'listen = "127.0.0.1:9108"\nmax_loop_lag_s = 0'),
            "metrics.max_loop_lag_s: must be more than 0 and less than 30 s",
        ),
        (("port = 1883", "port = 0"), "mqtt.port: Input should be greater than or equal to 1"),
        (
            ('url = "http://127.0.0.1:8086"', 'url = "127.0.0.1:8086"'),
            "influx.url: must start with http:// or https://",
        ),
    ],
)
def test_invalid_values_are_named(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    """Each bad value yields one problem that starts with its key path."""
    found = problems(tmp_path, MINIMAL.replace(*change))
    assert len(found) == 1
    assert found[0].startswith(expected), found


def test_missing_section_is_named(tmp_path: Path) -> None:
    """A missing required section is named."""
    text = MINIMAL.split("[buffer]")[0] + "[influx]\n" + MINIMAL.split("[influx]")[1]
    assert problems(tmp_path, text) == ["buffer: required key is missing"]


def test_not_toml_is_reported(tmp_path: Path) -> None:
    """A syntax error is reported with the file name, not a traceback."""
    (found,) = problems(tmp_path, "[mqtt\n")
    assert "not valid TOML" in found


def test_environment_overrides_any_key(tmp_path: Path) -> None:
    """GATEWAY__SECTION__KEY overrides, with TOML typing and list indexes."""
    settings = config.load(
        write(tmp_path, MINIMAL),
        {
            "GATEWAY__MQTT__PORT": "1884",
            "GATEWAY__MQTT__SUBSCRIPTIONS__0__QOS": "0",
            "GATEWAY__FLUSH__LINGER_S": "2.5",
            "GATEWAY__INFLUX__DATABASE": "other",
            "UNRELATED": "x",
        },
    )
    assert settings.mqtt.port == 1884
    assert settings.mqtt.subscriptions[0].qos == 0
    assert settings.flush.linger_s == 2.5
    assert settings.influx.database == "other"


def test_environment_typo_is_named(tmp_path: Path) -> None:
    """A misspelt override fails like a misspelt key."""
    assert problems(tmp_path, MINIMAL, {"GATEWAY__MQTT__HOTS": "x"}) == [
        "mqtt.hots: unknown key (from GATEWAY__MQTT__HOTS); did you mean 'host'?"
    ]


def test_secret_inline_in_file_is_refused(tmp_path: Path) -> None:
    """A password written in the file is refused with the ways to give it."""
    (found,) = problems(
        tmp_path,
        MINIMAL.replace('client_id = "gateway-1"', 'client_id = "gateway-1"\npassword = "hunter2"'),
    )
    assert found.startswith("mqtt.password: secrets may not be written in the config file")
    assert "hunter2" not in found


def test_secrets_from_file_and_environment_are_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Secrets load from a file or the environment and check-config never prints them."""
    (tmp_path / "pw").write_text("file-secret-1\n")
    text = MINIMAL.replace(
        'client_id = "gateway-1"',
        f'client_id = "gateway-1"\nusername = "gw"\npassword_file = "{tmp_path / "pw"}"',
    )
    path = write(tmp_path, text)
    settings = config.load(path, {})
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "file-secret-1"
    assert "file-secret-1" not in repr(settings)

    monkey = pytest.MonkeyPatch()
    monkey.setenv("GATEWAY__INFLUX__PASSWORD", "env-secret-2")
    try:
        assert cli.main(["check-config", str(path)]) == 0
    finally:
        monkey.undo()
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert shown["mqtt"]["password"] == "**********"
    assert shown["influx"]["password"] == "**********"
    assert "file-secret-1" not in out
    assert "env-secret-2" not in out


def test_unreadable_secret_file_is_named(tmp_path: Path) -> None:
    """A secret file that cannot be read is an error naming its key."""
    text = MINIMAL.replace(
        'database = "telemetry"', 'database = "telemetry"\npassword_file = "/nonexistent/pw"'
    )
    (found,) = problems(tmp_path, text)
    assert found.startswith("influx.password_file: cannot read /nonexistent/pw")


def test_relative_file_keys_are_read_from_the_systemd_credentials_directory(
    tmp_path: Path,
) -> None:
    """Under LoadCredential=, a relative *_file is the credential; an absolute one stays as is."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "gateway_influx-password").write_text("cred-secret\n")
    (credentials / "gateway_broker-ca.pem").write_text("not checked by the loader")
    (tmp_path / "mqtt-pw").write_text("absolute-secret")
    text = MINIMAL.replace(
        'database = "telemetry"',
        'database = "telemetry"\npassword_file = "gateway_influx-password"',
    ).replace(
        'client_id = "gateway-1"',
        f'client_id = "gateway-1"\nusername = "gw"\npassword_file = "{tmp_path / "mqtt-pw"}"\n'
        '[mqtt.tls]\nca_file = "gateway_broker-ca.pem"',
    )
    settings = config.load(write(tmp_path, text), {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert settings.influx.password is not None
    assert settings.influx.password.get_secret_value() == "cred-secret"
    assert settings.mqtt.password is not None
    assert settings.mqtt.password.get_secret_value() == "absolute-secret"
    assert settings.mqtt.tls is not None
    assert settings.mqtt.tls.ca_file == credentials / "gateway_broker-ca.pem"
    (found,) = problems(tmp_path, text, {"CREDENTIALS_DIRECTORY": str(tmp_path / "none")})
    assert found.startswith(f"influx.password_file: cannot read {tmp_path / 'none'}")


def test_check_config_exits_2_and_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config prints each problem and exits 2."""
    path = write(tmp_path, MINIMAL.replace("host =", "hots ="))
    assert cli.main(["check-config", str(path)]) == cli.EXIT_CONFIG
    assert "mqtt.hots: unknown key" in capsys.readouterr().err


def test_v2_needs_bucket_and_refuses_v1_keys(tmp_path: Path) -> None:
    """api v2 takes org/bucket, and says so when given v1's database."""
    text = MINIMAL.replace('api = "v1"', 'api = "v2"')
    assert problems(tmp_path, text) == ["influx: api 'v2' needs bucket"]
    text = text.replace('database = "telemetry"', 'bucket = "b"\ndatabase = "x"')
    assert problems(tmp_path, text) == [
        "influx: with api 'v2', these do not apply: database only to api 'v1' and 'v3'"
    ]


def test_v3_needs_database_and_refuses_other_apis_keys(tmp_path: Path) -> None:
    """api v3 writes into a database; no_sync is its own, org and bucket are v2's."""
    text = MINIMAL.replace('api = "v1"', 'api = "v3"\nno_sync = true')
    assert config.load(write(tmp_path, text), {}).influx.no_sync
    assert problems(tmp_path, text.replace('database = "telemetry"', "")) == [
        "influx: api 'v3' needs database"
    ]
    assert problems(tmp_path, text.replace("no_sync", 'org = "o"\nbucket = "b"\nno_sync')) == [
        "influx: with api 'v3', these do not apply: org only to api 'v2'; bucket only to api 'v2'"
    ]
    v1 = MINIMAL.replace('api = "v1"', 'api = "v1"\nno_sync = true')
    assert problems(tmp_path, v1) == [
        "influx: with api 'v1', these do not apply: no_sync only to api 'v3'"
    ]


def test_measurement_source_is_checked(tmp_path: Path) -> None:
    """A subscription needs exactly one source of measurement."""
    text = MINIMAL.replace('format = "json"', 'format = "json"\nmeasurement = "m"')
    (found,) = problems(tmp_path, text)
    assert found.startswith("mqtt.subscriptions.0: measurement is given twice")


def test_admission_lanes_follow_subscriptions_and_the_global_policy(tmp_path: Path) -> None:
    """Each device class becomes a lane; a subscription without a policy takes [buffer]'s."""
    text = MINIMAL.replace('capacity = "1GiB"', 'capacity = "1GiB"\npolicy = "shed"') + (
        '\n[[mqtt.subscriptions]]\ntopic = "alarms/{device}"\nmeasurement = "alarm"\n'
        'device_class = "alarm"\npriority = 9\ncritical = true\n'
    )
    settings = config.load(write(tmp_path, text), {})
    rules = rules_of(settings, 1000)
    assert rules.lane("alarm") == Lane("alarm", Policy.SHED, priority=9, critical=True)
    assert rules.lane("default") == Lane("default", Policy.SHED)
    assert rules.lane("gone-from-the-config") == Lane(policy=Policy.SHED)


def test_subscriptions_of_one_class_must_agree(tmp_path: Path) -> None:
    """Two subscriptions in one device class with different priorities are one named error."""
    text = MINIMAL + '\n[[mqtt.subscriptions]]\ntopic = "alarms/{device}"\nmeasurement = "a"\n'
    text += "priority = 9\n"
    found = problems(tmp_path, text)
    assert len(found) == 1
    assert found[0].startswith("mqtt: subscriptions.1.priority: device_class 'default' has"), found


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("policy", '"drop_newest"', "buffer.policy: Input should be 'reject', 'drop_oldest'"),
        ("device_share", "0", "buffer.device_share: Input should be greater than 0"),
        ("max_devices", "0", "buffer.max_devices: Input should be greater than or equal to 1"),
    ],
)
def test_admission_settings_are_checked(
    tmp_path: Path, key: str, value: str, expected: str
) -> None:
    found = problems(tmp_path, MINIMAL.replace('capacity = "1GiB"', f"{key} = {value}"))
    assert len(found) == 1
    assert found[0].startswith(expected), found


def test_tls_settings_name_missing_files_and_lone_certificates(tmp_path: Path) -> None:
    cert = tmp_path / "gateway.pem"
    cert.write_text("not checked here")

    def with_tls(table: str) -> list[str]:
        return problems(tmp_path, MINIMAL.replace("[buffer]", f"[mqtt.tls]\n{table}\n[buffer]"))

    assert with_tls(f'ca_file = "{tmp_path}/missing.pem"') == [
        "mqtt.tls.ca_file: Path does not point to a file"
    ]
    assert with_tls(f'cert_file = "{cert}"') == ["mqtt.tls: cert_file and key_file go together"]


def test_metrics_token_is_a_secret(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret-metrics-0123\n")
    text = MINIMAL.replace(
        'listen = "127.0.0.1:9108"', f'listen = "127.0.0.1:9108"\ntoken_file = "{token}"'
    )
    settings = config.load(write(tmp_path, text), {})
    assert settings.metrics.token is not None
    assert settings.metrics.token.get_secret_value() == "s3cret-metrics-0123"
    assert "s3cret-metrics-0123" not in json.dumps(config.redacted(settings))
    in_file = MINIMAL.replace('listen = "127.0.0.1:9108"', 'listen = "127.0.0.1:9108"\ntoken = "x"')
    assert problems(tmp_path, in_file)[0].startswith("metrics.token: secrets may not be written")


@pytest.mark.parametrize(
    ("listen", "token", "warned"),
    [
        ("127.0.0.1:9108", False, False),
        ("[::1]:9108", False, False),
        ("localhost:9108", False, False),
        ("0.0.0.0:9108", False, True),
        ("192.0.2.7:9108", False, True),
        ("gateway.example:9108", False, True),
        ("0.0.0.0:9108", True, False),
    ],
)
def test_an_unauthenticated_listener_beyond_loopback_is_warned_of(
    tmp_path: Path, listen: str, token: bool, warned: bool
) -> None:
    environ = {"GATEWAY__METRICS__LISTEN": f'"{listen}"'}
    if token:
        environ["GATEWAY__METRICS__TOKEN"] = "t0ken-0123456789"
    settings = config.load(write(tmp_path, MINIMAL), environ)
    found = advice.warnings(settings)
    assert bool(found) is warned
    assert all(w.startswith("metrics.listen: ") and "t0ken" not in w for w in found)


def test_the_listener_warning_looks_at_the_token_value_not_its_presence(tmp_path: Path) -> None:
    """A token that is there but empty is warned of like no token at all."""
    settings = config.load(write(tmp_path, MINIMAL), {"GATEWAY__METRICS__LISTEN": '"0.0.0.0:9"'})
    empty = settings.model_copy(
        update={"metrics": settings.metrics.model_copy(update={"token": SecretStr(" ")})}
    )
    (found,) = advice.warnings(empty)
    assert found.startswith("metrics.listen: 0.0.0.0:9 can be reached from other hosts")


def with_secret_file(section: str, key: str, file: Path | str) -> str:
    """The minimal configuration with `[section] key_file` naming `file`."""
    return MINIMAL.replace(f"[{section}]\n", f'[{section}]\n{key}_file = "{file}"\n', 1)


@pytest.mark.parametrize("key", sorted(config.SECRET_KEYS))
@pytest.mark.parametrize("content", ["", "\n", " \t\r\n"])
def test_an_empty_secret_file_is_refused_naming_the_key_and_the_file(
    tmp_path: Path, key: tuple[str, str], content: str
) -> None:
    """Nothing but white space in any secret's file is an error, not "no secret"."""
    file = tmp_path / "secret"
    file.write_text(content)
    (found,) = problems(tmp_path, with_secret_file(*key, file))
    assert found == (
        f"{key[0]}.{key[1]}_file: {file} is empty or holds only white space; "
        f"an empty {key[0]}.{key[1]} is refused"
    )


def test_an_empty_systemd_credential_is_refused_with_its_path(tmp_path: Path) -> None:
    """A relative file read from the credentials directory is named by its full path."""
    (tmp_path / "gateway_metrics-token").write_text("\n")
    text = with_secret_file("metrics", "token", "gateway_metrics-token")
    (found,) = problems(tmp_path, text, {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert found.startswith(f"metrics.token_file: {tmp_path / 'gateway_metrics-token'} is empty")


@pytest.mark.parametrize("key", sorted(config.SECRET_KEYS))
@pytest.mark.parametrize("value", ["", '""', "   ", '"  "'])
def test_an_empty_secret_from_the_environment_is_refused_naming_the_variable(
    tmp_path: Path, key: tuple[str, str], value: str
) -> None:
    name = f"GATEWAY__{key[0].upper()}__{key[1].upper()}"
    (found,) = problems(tmp_path, MINIMAL, {name: value})
    assert found == (
        f"{key[0]}.{key[1]}: {name} is empty or holds only white space; an empty secret is refused"
    )


def test_check_config_exits_2_on_a_token_file_holding_only_a_newline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The empty token file of a listener beyond loopback stops the configuration (exit 2)."""
    token = tmp_path / "metrics-token"
    token.write_text("\n")
    text = with_secret_file("metrics", "token", token).replace("127.0.0.1:9108", "0.0.0.0:9108")
    assert cli.main(["check-config", str(write(tmp_path, text))]) == cli.EXIT_CONFIG == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"metrics.token_file: {token} is empty or holds only white space" in captured.err


@pytest.mark.parametrize("source", ["file", "environment"])
def test_a_short_metrics_token_is_refused_without_showing_it(tmp_path: Path, source: str) -> None:
    """Fewer than 16 characters is refused, naming where the token came from."""
    short = "Secret-15-chars"
    assert len(short) == 15
    if source == "file":
        file = tmp_path / "metrics-token"
        file.write_text(short + "\n")
        (found,) = problems(tmp_path, with_secret_file("metrics", "token", file))
        assert found.startswith(f"metrics.token: shorter than 16 characters (read from {file}): ")
    else:
        (found,) = problems(tmp_path, MINIMAL, {"GATEWAY__METRICS__TOKEN": short})
        assert found.startswith("metrics.token: shorter than 16 characters: ")
        assert found.endswith("(from GATEWAY__METRICS__TOKEN)")
    assert short not in found
    accepted = config.load(write(tmp_path, MINIMAL), {"GATEWAY__METRICS__TOKEN": short + "x"})
    assert accepted.metrics.token is not None


@pytest.mark.parametrize(
    "url",
    [
        "http://admin:Hunter2-pw@influx.example:8086",
        "https://admin:Hunter2-pw@influx.example",
        "http://:Hunter2-pw@influx.example:8086",
        "http://Hunter2-pw@influx.example:8086",
        "http://admin:Hunter2-pw@influx.example:notaport",
        "http://admin:Hunter2 pw@influx.example",
        # A "/", "?" or "#" in the password ends the parsed authority before the "@".
        "http://admin:Hunter2/pw@influx.example:8086",
        "http://admin:1234/Hunter2@influx.example:8086",
        "http://admin:Hunter2?pw@influx.example",
        "http://admin:Hunter2#pw@influx.example",
        "http://[::1]:8086/Hunter2@influx.example",
    ],
)
def test_a_user_or_password_in_the_database_url_is_refused_and_never_shown(
    tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """userinfo in [influx] url points at username/password_file and does not echo itself."""
    text = MINIMAL.replace('url = "http://127.0.0.1:8086"', f'url = "{url}"')
    (found,) = problems(tmp_path, text)
    assert found.startswith("influx.url: holds a user name or password")
    assert "username and password_file" in found
    assert "token_file" in found
    assert "Hunter2" not in found
    (env_found,) = problems(tmp_path, MINIMAL, {"GATEWAY__INFLUX__URL": url})
    assert env_found.startswith("influx.url: holds a user name or password")
    assert "Hunter2" not in env_found
    assert cli.main(["check-config", str(write(tmp_path, text))]) == 2
    captured = capsys.readouterr()
    assert "Hunter2" not in captured.out + captured.err


@pytest.mark.parametrize(
    "url",
    [
        "http://db:8086/Hunter2 pw",
        "http://db:port/Hunter2",
        "http:///Hunter2",
        "https://:1/Hunter2",
    ],
)
def test_no_refusal_of_the_database_url_repeats_it(tmp_path: Path, url: str) -> None:
    """Its path may hold a secret too: a malformed URL is refused without being shown."""
    text = MINIMAL.replace('url = "http://127.0.0.1:8086"', f'url = "{url}"')
    (found,) = problems(tmp_path, text)
    assert found.startswith("influx.url: ")
    assert "Hunter2" not in found


def test_a_query_in_the_database_url_is_refused_without_echoing_it(tmp_path: Path) -> None:
    """InfluxDB 1.x takes credentials as ?u=&p=: the refusal does not repeat them."""
    text = MINIMAL.replace(
        'url = "http://127.0.0.1:8086"', 'url = "http://127.0.0.1:8086/?u=gw&p=Hunter2-pw"'
    )
    (found,) = problems(tmp_path, text)
    assert found == "influx.url: a query or fragment has no place in the database's URL"


def test_every_command_takes_the_configuration_as_dash_c_with_a_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, MINIMAL)
    assert cli.main(["check-config", "-c", str(path)]) == 0
    assert cli.main(["check-config", str(path)]) == 0, "the path alone, as before"
    capsys.readouterr()
    parser = cli.build_parser()
    for command in ("run", "retire", "check-config", "try", "status", "rejects", "verify-buffer"):
        assert parser.parse_args([command]).config == cli.DEFAULT_CONFIG
    assert parser.parse_args(["dead-letters", "list"]).config == cli.DEFAULT_CONFIG
