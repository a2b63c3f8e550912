"""The Debian package: built by scripts/package, installed with dpkg, run, purged; and pipx."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import __version__

pytestmark = [pytest.mark.integration, pytest.mark.package]

ROOT = Path(__file__).parents[2]
# What an installed package leaves on the box, and a purge takes away.
INSTALLED = [
    Path("/opt/gateway/bin/gateway"),
    Path("/usr/bin/gateway"),
    Path("/lib/systemd/system/gateway.service"),
    Path("/etc/gateway/gateway.toml"),
    Path("/etc/gateway/credentials"),
    Path("/usr/share/doc/gateway/config/reference.toml"),
    Path("/usr/share/doc/gateway/docs/operator-guide.md"),
    Path("/usr/share/gateway/grafana-dashboard.json"),
    Path("/usr/share/gateway/prometheus-alerts.yml"),
    Path("/usr/share/man/man1/gateway.1.gz"),
    Path("/usr/share/bash-completion/completions/gateway"),
]


def run(*argv: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        **kwargs,  # type: ignore[call-overload]
    )


def is_installed() -> bool:
    status = run("dpkg-query", "-W", "-f=${Status}", "gateway").stdout
    return "installed" in status and "not-installed" not in status


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("dpkg-deb") is None:
        pytest.skip("not a Debian system")
    out = tmp_path_factory.mktemp("dist")
    built = run(ROOT / "scripts" / "package", out)
    assert built.returncode == 0, built.stdout + built.stderr
    (found,) = out.glob("gateway_*.deb")
    return found


def test_the_package_holds_the_unit_the_config_the_docs_and_a_man_page(deb: Path) -> None:
    assert deb.name.startswith(f"gateway_{__version__}_")
    listing = run("dpkg-deb", "--contents", deb).stdout
    for path in INSTALLED:
        assert f".{path}" in listing, path
    # The status page is package data: served from inside the installed package.
    for name in ("index.html", "status.js", "status.css"):
        assert f"/site-packages/gateway/api/static/{name}" in listing, name
    assert run("dpkg-deb", "--field", deb, "Package").stdout.strip() == "gateway"
    assert "python3 (>=" in run("dpkg-deb", "--field", deb, "Depends").stdout
    conffiles = run("dpkg-deb", "--info", deb, "conffiles").stdout.split()
    assert conffiles == ["/etc/gateway/gateway.toml"]
    credentials = next(line for line in listing.splitlines() if line.endswith("credentials/"))
    assert credentials.startswith("drwx------ root/root")


def test_dpkg_installs_it_runs_it_keeps_an_edited_config_and_purges_it(deb: Path) -> None:
    """As an operator would: install, check, upgrade over an edited config, purge."""
    if os.geteuid() != 0:
        pytest.skip("dpkg -i needs root")
    if is_installed():
        pytest.skip("a gateway package is installed on this machine already; left alone")
    try:
        installed = run("dpkg", "-i", deb)
        assert installed.returncode == 0, installed.stdout + installed.stderr
        assert "systemctl enable --now gateway" in installed.stdout
        for path in INSTALLED:
            assert path.exists(), path
        environ = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        environ["PATH"] = "/usr/bin:/bin"
        assert run("gateway", "--version", env=environ).stdout.strip() == f"gateway {__version__}"
        checked = run("gateway", "check-config", "/etc/gateway/gateway.toml", env=environ)
        assert checked.returncode == 0, checked.stderr
        assert run("gateway", "check-config", env=environ).returncode == 0, "the default path"
        assert run("man", "-w", "gateway").stdout.strip() == "/usr/share/man/man1/gateway.1.gz"
        if shutil.which("systemd-analyze"):
            verified = run("systemd-analyze", "verify", "/lib/systemd/system/gateway.service")
            assert verified.returncode == 0, verified.stderr
        # An upgrade keeps the operator's configuration (a conffile).
        config = Path("/etc/gateway/gateway.toml")
        config.write_text(config.read_text().replace("gateway-1", "edited-by-operator"))
        again = run("dpkg", "-i", "--force-confdef", "--force-confold", deb)
        assert again.returncode == 0, again.stderr
        assert "edited-by-operator" in config.read_text()
    finally:
        purged = run("dpkg", "--purge", "gateway")
    assert purged.returncode == 0, purged.stderr
    assert not is_installed()
    for path in INSTALLED:
        assert not path.exists(), path
    assert not Path("/opt/gateway").exists()


def test_pipx_installs_the_command(tmp_path: Path) -> None:
    pipx = Path(sys.executable).parent / "pipx"
    if not pipx.exists():
        pytest.skip("pipx is not installed")
    environ = dict(os.environ)
    environ.pop("VIRTUAL_ENV", None)
    environ |= {"PIPX_HOME": str(tmp_path / "home"), "PIPX_BIN_DIR": str(tmp_path / "bin")}
    environ |= {"PIPX_MAN_DIR": str(tmp_path / "man")}
    installed = run(pipx, "install", ROOT, env=environ)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    command = tmp_path / "bin" / "gateway"
    assert run(command, "--version").stdout.strip() == f"gateway {__version__}"
    assert "check-config" in run(command, "completion", "bash").stdout
