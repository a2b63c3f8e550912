"""Where the test servers come from: Debian's packages (the default) or Docker containers.

`GATEWAY_TEST_SERVERS` chooses: unset or `debian` runs mosquitto, influxd and victoria-metrics
from PATH as child processes; `docker` runs the same servers, with the same configuration files
and data directories, in containers started by testcontainers (eclipse-mosquitto 2, InfluxDB
1.8, VictoriaMetrics), and adds the databases Debian does not package: InfluxDB 2.7 (v2 API
with a real org, bucket and token) and InfluxDB 3 Core. Asking for Docker where no engine
answers is an error, never a silent fall back to the other backend.

Containers use the host's network, so a server listens on the loopback port the tests chose,
and mount the server's work directory at the same path, so a configuration written for the
local process serves the container unchanged, and a restart on the same directory keeps the
data, as the fault tests expect.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.tools import servers

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

BACKEND_ENV = "GATEWAY_TEST_SERVERS"
BACKENDS = ("debian", "docker")
# Images for the servers the suite starts; the commands inside them are the servers' own.
IMAGES = {
    "mosquitto": ("eclipse-mosquitto:2", "/usr/sbin/mosquitto"),
    "influxd": ("influxdb:1.8", "influxd"),
    "victoria-metrics": ("victoriametrics/victoria-metrics:v1.102.1", "/victoria-metrics-prod"),
}
INFLUXDB2_IMAGE = "influxdb:2.7"
INFLUXDB3_IMAGE = "influxdb:3-core"
READY_TIMEOUT_S = 60.0


class BackendError(Exception):
    """The backend asked for cannot be used here; the message says why and what to set."""


def choose(environ: Mapping[str, str], engine_answers: Callable[[], bool]) -> str:
    """The backend `environ` asks for, checked against what this machine has.

    Raises:
        BackendError: for an unknown value, or Docker where no engine answers.
    """
    wanted = environ.get(BACKEND_ENV, "").strip().lower() or "debian"
    if wanted not in BACKENDS:
        raise BackendError(
            f"{BACKEND_ENV}={environ[BACKEND_ENV]!r}: expected one of {', '.join(BACKENDS)}"
        )
    if wanted == "docker" and not engine_answers():
        where = environ.get("DOCKER_HOST", "the default socket, /var/run/docker.sock")
        raise BackendError(
            f"{BACKEND_ENV}=docker, but no Docker engine answers at {where}; start one, set "
            f"DOCKER_HOST, or unset {BACKEND_ENV} for the servers from Debian's packages"
        )
    return wanted


def docker_engine_answers() -> bool:
    """Whether a Docker engine answers a ping (False where the library or engine is absent)."""
    try:
        import docker  # noqa: PLC0415 - only with the Docker backend

        client = docker.from_env(timeout=5)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - any failure to reach an engine means "no engine"
        return False


@dataclass(frozen=True)
class ContainerSpec:
    """What one container runs: its image, entrypoint, arguments, environment and mounts."""

    image: str
    entrypoint: list[str]
    command: list[str]
    environment: dict[str, str]
    # host path -> container path, read-write.
    mounts: dict[str, str]


def spec_for(name: str, argv: list[str], workdir: Path) -> ContainerSpec:
    """The container that runs a server `servers` configured for a local process."""
    image, _ = IMAGES[name]
    return ContainerSpec(image, argv[:1], argv[1:], {}, {str(workdir): str(workdir)})


def influxdb2_spec(workdir: Path, port: int, org: str, bucket: str, token: str) -> ContainerSpec:
    """InfluxDB 2.7 set up on first start with an org, a bucket and an operator token."""
    return ContainerSpec(
        INFLUXDB2_IMAGE,
        ["/entrypoint.sh"],
        ["influxd"],
        {
            "DOCKER_INFLUXDB_INIT_MODE": "setup",
            "DOCKER_INFLUXDB_INIT_USERNAME": "gateway-tests",
            "DOCKER_INFLUXDB_INIT_PASSWORD": "gateway-tests-password",
            "DOCKER_INFLUXDB_INIT_ORG": org,
            "DOCKER_INFLUXDB_INIT_BUCKET": bucket,
            "DOCKER_INFLUXDB_INIT_ADMIN_TOKEN": token,
            "INFLUXD_HTTP_BIND_ADDRESS": f"127.0.0.1:{port}",
            "INFLUXD_REPORTING_DISABLED": "true",
        },
        {str(workdir): "/var/lib/influxdb2"},
    )


def influxdb3_spec(workdir: Path, port: int) -> ContainerSpec:
    """InfluxDB 3 Core on local files, without authentication (it takes the v2 write API)."""
    return ContainerSpec(
        INFLUXDB3_IMAGE,
        ["influxdb3"],
        [
            "serve",
            "--node-id=gateway-tests",
            "--object-store=file",
            "--data-dir=/var/lib/influxdb3",
            f"--http-bind=127.0.0.1:{port}",
            "--without-auth",
        ],
        {},
        {str(workdir): "/var/lib/influxdb3"},
    )


class ContainerServer(servers.Server):
    """A server in a container, stopped and killed like a process."""

    container: Any = None

    def stop(self) -> None:
        """Stop the container (SIGTERM, then SIGKILL after its timeout) and remove it."""
        if self.container is not None:
            self.container.stop()
            self.container = None

    def kill(self) -> None:
        """SIGKILL, for fault tests; the data directory stays for a restart."""
        if self.container is not None:
            self.container.get_wrapped_container().kill()
            self.container.stop()
            self.container = None


def run_container(
    name: str, spec: ContainerSpec, port: int, workdir: Path, ready: Callable[[], bool]
) -> ContainerServer:
    """Start `spec` on the host's network; return once `ready()`.

    Raises:
        servers.ServerError: with the container's log, when it is not ready in time.
    """
    from testcontainers.core.container import DockerContainer  # noqa: PLC0415

    workdir.mkdir(parents=True, exist_ok=True)
    container = DockerContainer(spec.image).with_kwargs(
        network_mode="host", entrypoint=spec.entrypoint
    )
    container = container.with_command(spec.command).with_envs(**spec.environment)
    for host_path, container_path in spec.mounts.items():
        container = container.with_volume_mapping(host_path, container_path, "rw")
    container.start()
    server = ContainerServer(name, port, workdir, None)  # type: ignore[arg-type]
    server.container = container
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if time.monotonic() > deadline:
            logs = b"".join(container.get_logs()).decode(errors="replace")[-2000:]
            server.stop()
            raise servers.ServerError(f"{name} ({spec.image}) did not start on {port}:\n{logs}")
        time.sleep(0.1)
    return server


class Containers:
    """`servers.Launcher` for the Docker backend."""

    def binary(self, name: str) -> str:
        """The server's command inside its image."""
        return IMAGES[name][1]

    def spawn(
        self, name: str, argv: list[str], port: int, workdir: Path, ready: Callable[[], bool]
    ) -> servers.Server:
        """The container of `name` running `argv`."""
        return run_container(name, spec_for(name, argv, workdir), port, workdir, ready)


BACKEND = choose(os.environ, docker_engine_answers) if os.environ.get(BACKEND_ENV) else "debian"
LAUNCHER: servers.Launcher = Containers() if BACKEND == "docker" else servers.LOCAL


def start_mosquitto(
    workdir: Path, port: int | None = None, more_listeners: str = ""
) -> servers.Server:
    """Mosquitto from the chosen backend (see `servers.start_mosquitto`)."""
    return servers.start_mosquitto(workdir, port, more_listeners, launcher=LAUNCHER)


def start_influxd(workdir: Path, port: int | None = None) -> servers.Server:
    """InfluxDB 1.x from the chosen backend (see `servers.start_influxd`)."""
    return servers.start_influxd(workdir, port, launcher=LAUNCHER)


def start_victoria_metrics(
    workdir: Path, port: int | None = None, tls: tuple[Path, Path] | None = None
) -> servers.Server:
    """VictoriaMetrics from the chosen backend (see `servers.start_victoria_metrics`)."""
    return servers.start_victoria_metrics(workdir, port, tls, launcher=LAUNCHER)
