"""Choosing where the test servers come from, and what a container of each runs: no Docker."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests import backends

if TYPE_CHECKING:
    from pathlib import Path


def engine(answers: bool) -> object:
    calls: list[int] = []

    def ping() -> bool:
        calls.append(1)
        return answers

    ping.calls = calls  # type: ignore[attr-defined]
    return ping


@pytest.mark.parametrize("value", [None, "", "debian", " Debian "])
def test_the_debian_servers_are_the_default_and_need_no_engine(value: str | None) -> None:
    ping = engine(answers=False)
    environ = {} if value is None else {backends.BACKEND_ENV: value}
    assert backends.choose(environ, ping) == "debian"  # type: ignore[arg-type]
    assert ping.calls == []  # type: ignore[attr-defined]


def test_docker_is_chosen_where_an_engine_answers() -> None:
    assert backends.choose({backends.BACKEND_ENV: "docker"}, engine(answers=True)) == "docker"  # type: ignore[arg-type]


def test_docker_without_an_engine_is_an_error_not_a_fallback() -> None:
    environ = {backends.BACKEND_ENV: "docker", "DOCKER_HOST": "tcp://127.0.0.1:1"}
    with pytest.raises(
        backends.BackendError, match=r"no Docker engine answers at tcp://127\.0\.0\.1:1"
    ):
        backends.choose(environ, engine(answers=False))  # type: ignore[arg-type]


def test_an_unknown_backend_is_named_with_the_choices() -> None:
    with pytest.raises(backends.BackendError, match=r"'podman': expected one of debian, docker"):
        backends.choose({backends.BACKEND_ENV: "podman"}, engine(answers=True))  # type: ignore[arg-type]


def test_this_run_reports_its_backend() -> None:
    assert backends.BACKEND in backends.BACKENDS
    expected = backends.Containers if backends.BACKEND == "docker" else type(backends.servers.LOCAL)
    assert isinstance(backends.LAUNCHER, expected)


def test_a_container_runs_the_configuration_written_for_the_local_server(tmp_path: Path) -> None:
    """Same argv, same paths: the work directory is mounted where the configuration names it."""
    argv = ["/usr/sbin/mosquitto", "-c", str(tmp_path / "mosquitto.conf")]
    spec = backends.spec_for("mosquitto", argv, tmp_path)
    assert spec.image.startswith("eclipse-mosquitto:2")
    assert spec.entrypoint + spec.command == argv
    assert spec.mounts == {str(tmp_path): str(tmp_path)}
    assert backends.Containers().binary("victoria-metrics") == "/victoria-metrics-prod"
    assert backends.IMAGES["influxd"][0] == "influxdb:1.8"


def test_influxdb2_is_set_up_with_an_org_a_bucket_and_a_token_on_the_chosen_port(
    tmp_path: Path,
) -> None:
    spec = backends.influxdb2_spec(tmp_path, 18086, "edge", "telemetry", "t0ken")
    assert spec.image == "influxdb:2.7"
    env = spec.environment
    assert env["DOCKER_INFLUXDB_INIT_MODE"] == "setup"
    assert (env["DOCKER_INFLUXDB_INIT_ORG"], env["DOCKER_INFLUXDB_INIT_BUCKET"]) == (
        "edge",
        "telemetry",
    )
    assert env["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"] == "t0ken"
    assert env["INFLUXD_HTTP_BIND_ADDRESS"] == "127.0.0.1:18086"
    assert spec.mounts == {str(tmp_path): "/var/lib/influxdb2"}
    three = backends.influxdb3_spec(tmp_path, 18181)
    assert "--http-bind=127.0.0.1:18181" in three.command
