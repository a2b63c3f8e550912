"""The arm64 package: built in an arm64 Debian root through qemu, installed there, run, purged.

scripts/foreign-root makes (or reuses) the root, cached machine-wide; scripts/package --arch
arm64 builds the .deb inside it, so that pip takes the aarch64 wheels. The test installs it in
the root with dpkg, runs the root's own mosquitto and influxd and the packaged gateway there
(the root shares this machine's network, so all listen on its loopback), publishes from here and
reads every reading back from influxd, then purges the package.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from gateway import __version__
from gateway.tools import servers
from tests.conftest import JSON_SUBSCRIPTION, InfluxV1
from tests.gatewayproc import (
    GatewayProcess,
    config_text,
    expected_points,
    publish_simulated,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

pytestmark = [pytest.mark.integration, pytest.mark.package, pytest.mark.foreign_arch]

ROOT = Path(__file__).parents[2]
FOREIGN_ROOT = ROOT / "scripts" / "foreign-root"
ARCH = "arm64"
# ELF e_machine of AArch64: what the installed extension modules must be built for.
EM_AARCH64 = 183
# A cold root is debootstrapped through qemu (about 5 minutes on a CI machine); the package
# build then installs the lock's wheels there.
BUILD_TIMEOUT_S = 1800
READINGS = 1000
DEVICES = 10
# Everything in the root runs emulated: the gateway's start and the servers' take seconds.
EMULATED_START_S = 120.0
DELIVERY_DEADLINE_S = 120.0


def run(argv: Sequence[str | Path], timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """Run `argv` in a process group of its own, which is killed whole on a timeout or error."""
    process = subprocess.Popen(
        [str(a) for a in argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return subprocess.CompletedProcess(process.args, process.returncode, output, "")


def in_root(*argv: str | Path, binds: Sequence[Path] = ()) -> list[str]:
    """`argv` run in the arm64 root, with `binds` seen there at their own paths."""
    bind_args = [arg for path in binds for arg in ("--bind", str(path))]
    return [str(FOREIGN_ROOT), ARCH, *bind_args, "--", *(str(a) for a in argv)]


class RootProcesses:
    """`servers.Launcher` for the root's own mosquitto and influxd, run in it through qemu."""

    def binary(self, name: str) -> str:
        """Where the root's Debian package puts the server."""
        return {"mosquitto": "/usr/sbin/mosquitto", "influxd": "/usr/bin/influxd"}[name]

    def spawn(
        self, name: str, argv: list[str], port: int, workdir: Path, ready: Callable[[], bool]
    ) -> servers.Server:
        """The server in the root, its work directory bound there at the same path."""
        return servers.LOCAL.spawn(name, in_root(*argv, binds=[workdir]), port, workdir, ready)


class PackagedGateway(GatewayProcess):
    """The gateway as the package installed it in the root: /usr/bin/gateway."""

    def _python(self) -> list[str]:
        return in_root("/usr/bin/gateway", binds=[self.workdir])


def elf_machine(path: Path) -> int:
    """e_machine of a little-endian ELF file."""
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    assert header[5] == 1, f"{path} is not little-endian"
    return int.from_bytes(header[18:20], "little")


@pytest.fixture(scope="module")
def arm64_root() -> Path:
    """The cached arm64 root, made on first use on this machine."""
    if os.geteuid() != 0:
        pytest.skip("the arm64 root needs root (debootstrap, chroot, binfmt_misc)")
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        pytest.skip("not a Debian system: no apt-get to install qemu and debootstrap")
    started = time.monotonic()
    made = run([FOREIGN_ROOT, ARCH], BUILD_TIMEOUT_S)
    assert made.returncode == 0, made.stdout[-5000:]
    print(f"arm64 root ready in {time.monotonic() - started:.0f} s")
    return Path(made.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def arm64_deb(arm64_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/package --arch arm64, built inside the root."""
    assert arm64_root.is_dir()
    out = tmp_path_factory.mktemp("dist-arm64")
    started = time.monotonic()
    built = run([ROOT / "scripts" / "package", "--arch", ARCH, out], BUILD_TIMEOUT_S)
    assert built.returncode == 0, built.stdout[-5000:]
    print(f"arm64 package built in {time.monotonic() - started:.0f} s")
    (found,) = out.glob(f"gateway_{__version__}_{ARCH}.deb")
    return found


def is_installed(root: Path) -> bool:
    status = run(in_root("dpkg-query", "-W", "-f=${Status}", "gateway")).stdout
    assert root.is_dir()
    return "install ok installed" in status


@contextlib.contextmanager
def installed(deb: Path, root: Path) -> Iterator[None]:
    """The package installed in the root with dpkg -i, purged again whatever happens."""
    try:
        done = run(in_root("dpkg", "-i", deb, binds=[deb.parent]))
        assert done.returncode == 0, done.stdout
        yield
    finally:
        purged = run(in_root("dpkg", "--purge", "gateway"))
    assert purged.returncode == 0, purged.stdout
    assert not is_installed(root)
    assert not (root / "opt" / "gateway").exists()
    assert not (root / "usr" / "bin" / "gateway").exists()


# Includes making the root and building the package when the machine has neither yet.
@pytest.mark.timeout(2 * BUILD_TIMEOUT_S)
def test_the_arm64_package_runs_in_an_arm64_debian_and_delivers_every_reading(
    arm64_root: Path, arm64_deb: Path, tmp_path: Path, run_id: str
) -> None:
    """dpkg -i in the arm64 root; 1,000 readings through its mosquitto to its influxd; purge."""
    arch = run(["dpkg-deb", "--field", arm64_deb, "Architecture"]).stdout.strip()
    assert arch == ARCH
    launcher = RootProcesses()
    with contextlib.ExitStack() as stack, installed(arm64_deb, arm64_root):
        assert is_installed(arm64_root)
        # What the package installed is aarch64 code: the wheels pip chose in the root.
        (lmdb_so,) = (arm64_root / "opt" / "gateway").glob("lib/python3*/site-packages/lmdb/*.so")
        assert elf_machine(lmdb_so) == EM_AARCH64, lmdb_so
        version = run(in_root("/usr/bin/gateway", "--version"))
        assert version.stdout.strip() == f"gateway {__version__}", version.stdout
        broker = servers.start_mosquitto(tmp_path / "mosquitto", launcher=launcher)
        stack.callback(broker.stop)
        influxd = servers.start_influxd(tmp_path / "influxd", launcher=launcher)
        stack.callback(influxd.stop)
        servers.influxql(influxd.url, f"CREATE DATABASE {run_id}")
        influx = InfluxV1(influxd.url, run_id)
        workdir = tmp_path / "gateway"
        workdir.mkdir()
        metrics_port = servers.free_port()
        gw = PackagedGateway(
            workdir,
            config_text(
                mqtt_port=broker.port,
                buffer_dir=workdir / "buffer",
                influx=influx.config,
                metrics_port=metrics_port,
                subscriptions=JSON_SUBSCRIPTION.format(run=run_id),
                client_id=f"gw-{run_id}",
            ),
            metrics_port,
        )
        gw.launch()
        stack.callback(gw.kill)
        wait_for(
            lambda: gw.metrics().get("gateway_mqtt_connected") == 1,
            EMULATED_START_S,
            "the packaged gateway to connect",
        )
        publish_simulated(broker.port, run_id, READINGS, DEVICES)
        wait_for(lambda: influx.count() == READINGS, DELIVERY_DEADLINE_S, "every reading stored")
        assert influx.points() == expected_points(READINGS, DEVICES)
        assert gw.readings("delivered") == READINGS
