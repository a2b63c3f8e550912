"""Local Mosquitto, InfluxDB 1.x and VictoriaMetrics servers for the demo, the benchmark and tests.

Each runs from its binary on PATH, on a free loopback port, with all state in a given directory,
and is stopped (then killed, if it must be) by `stop` whatever happened before.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.errors import GatewayError

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class ServerError(GatewayError):
    """A server binary is missing or did not come up."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def require_binary(name: str) -> str:
    """Path of `name` on PATH, or a ServerError saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise ServerError(
            f"{name} is not installed; run scripts/setup (apt-get install "
            "mosquitto influxdb victoria-metrics)"
        )
    return path


@dataclass
class Server:
    """A running server process."""

    name: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base HTTP URL (for the databases)."""
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Terminate, then kill after a timeout; safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._close_log()

    def kill(self) -> None:
        """Kill -9, for fault tests."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_log()

    def _close_log(self) -> None:
        log = self.extra.pop("log", None)
        if log is not None:
            log.close()


class Launcher(Protocol):
    """How a server is run: as a local process (here), or in a container (the tests' Docker)."""

    def binary(self, name: str) -> str:
        """The command that runs `name`."""

    def spawn(
        self, name: str, argv: list[str], port: int, workdir: Path, ready: Callable[[], bool]
    ) -> Server:
        """Start `argv` with `workdir` as its home; return once `ready()` or raise ServerError."""


class LocalProcesses:
    """Servers from the packages on PATH, as processes of this one."""

    def binary(self, name: str) -> str:
        """The binary on PATH."""
        return require_binary(name)

    def spawn(
        self, name: str, argv: list[str], port: int, workdir: Path, ready: Callable[[], bool]
    ) -> Server:
        """A child process, logging to `workdir`/`name`.log."""
        return _spawn(name, argv, port, workdir, ready)


LOCAL = LocalProcesses()


def _spawn(
    name: str, argv: list[str], port: int, workdir: Path, ready: Callable[[], bool]
) -> Server:
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / f"{name}.log").open("ab")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    server = Server(name, port, workdir, process, {"log": log})
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            tail = (workdir / f"{name}.log").read_text(errors="replace")[-2000:]
            raise ServerError(f"{name} did not start on port {port}:\n{tail}")
        time.sleep(0.05)
    return server


def _accepts_tcp(port: int) -> Callable[[], bool]:
    def check() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        return False

    return check


def http_ok(url: str) -> Callable[[], bool]:
    """A readiness check: `url` answers 2xx."""

    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
                status: int = response.status
                return 200 <= status < 300  # noqa: PLR2004
        except (OSError, urllib.error.URLError):
            return False

    return check


def start_mosquitto(
    workdir: Path, port: int | None = None, more_listeners: str = "", launcher: Launcher = LOCAL
) -> Server:
    """Mosquitto with persistence, so a restart keeps persistent sessions and their messages.

    `port` is an anonymous plain listener; `more_listeners` adds listener blocks (TLS, logins),
    each with its own settings.
    """
    binary = launcher.binary("mosquitto")
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        ("per_listener_settings true\n" if more_listeners else "") + f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        f"{more_listeners}\n"
        f"user {getpass.getuser()}\n"
        "persistence true\n"
        f"persistence_location {workdir}/\n"
        # The defaults (1000 queued, 20 in flight) would drop QoS 1 messages for a gateway that
        # is away, and throttle one that is present; see docs/operator-guide.md, broker settings.
        "max_queued_messages 10000000\n"
        "max_queued_bytes 0\n"
        "max_inflight_messages 0\n"
        # $SYS counters every second (default 10 s), for the gateway's broker metrics.
        "sys_interval 1\n"
        "log_type error\nlog_type warning\n",
        encoding="utf-8",
    )
    return launcher.spawn("mosquitto", [binary, "-c", str(conf)], port, workdir, _accepts_tcp(port))


def start_influxd(workdir: Path, port: int | None = None, launcher: Launcher = LOCAL) -> Server:
    """InfluxDB 1.x with its data under `workdir`; only its HTTP API on loopback."""
    binary = launcher.binary("influxd")
    port = port or free_port()
    rpc_port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "influxdb.conf"
    conf.write_text(
        f'reporting-disabled = true\nbind-address = "127.0.0.1:{rpc_port}"\n'
        f'[meta]\n  dir = "{workdir}/meta"\n'
        f'[data]\n  dir = "{workdir}/data"\n  wal-dir = "{workdir}/wal"\n'
        "  query-log-enabled = false\n"
        "[monitor]\n  store-enabled = false\n"
        f'[http]\n  bind-address = "127.0.0.1:{port}"\n  log-enabled = false\n'
        '[logging]\n  level = "warn"\n  suppress-logo = true\n',
        encoding="utf-8",
    )
    return launcher.spawn(
        "influxd",
        [binary, "-config", str(conf)],
        port,
        workdir,
        http_ok(f"http://127.0.0.1:{port}/ping"),
    )


def start_victoria_metrics(
    workdir: Path,
    port: int | None = None,
    tls: tuple[Path, Path] | None = None,
    launcher: Launcher = LOCAL,
) -> Server:
    """VictoriaMetrics single-node; takes line protocol on /write and /api/v2/write.

    `tls`: (certificate, key) to serve HTTPS instead of HTTP.
    """
    binary = launcher.binary("victoria-metrics")
    port = port or free_port()
    tls_args = ["-tls", f"-tlsCertFile={tls[0]}", f"-tlsKeyFile={tls[1]}"] if tls else []
    argv = [
        binary,
        *tls_args,
        f"-storageDataPath={workdir}/data",
        f"-httpListenAddr=127.0.0.1:{port}",
        # Test and demo data carry fixed timestamps; the default one-month retention would
        # silently drop them.
        "-retentionPeriod=100y",
        "-loggerLevel=WARN",
    ]
    ready = _accepts_tcp(port) if tls else http_ok(f"http://127.0.0.1:{port}/health")
    return launcher.spawn("victoria-metrics", argv, port, workdir, ready)


def influxql(url: str, query: str, database: str | None = None) -> list[dict[str, Any]]:
    """Run an InfluxQL statement on InfluxDB 1.x; returns the series of the first result."""
    params = {"q": query, "epoch": "ns"}
    if database:
        params["db"] = database
    request = urllib.request.Request(  # noqa: S310 - loopback http
        f"{url}/query", data=urllib.parse.urlencode(params).encode()
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        result = json.load(response)["results"][0]
    if "error" in result:
        raise ServerError(f"InfluxQL {query!r}: {result['error']}")
    series: list[dict[str, Any]] = result.get("series", [])
    return series


def victoria_export(
    url: str, match: str = '{__name__=~".+"}', context: ssl.SSLContext | None = None
) -> list[dict[str, Any]]:
    """Every stored series of VictoriaMetrics matching `match`, after flushing its buffers."""
    with urllib.request.urlopen(f"{url}/internal/force_flush", timeout=30, context=context):  # noqa: S310
        pass
    data = urllib.parse.urlencode({"match[]": match}).encode()
    with urllib.request.urlopen(  # noqa: S310
        f"{url}/api/v1/export", data=data, timeout=60, context=context
    ) as response:
        return [json.loads(line) for line in response if line.strip()]


def children_of(pid: int) -> list[int]:
    """The pids whose parent is `pid` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)
