"""`gateway man`: the manual page, generated from the parser by argparse-manpage.

The package build writes it to `/usr/share/man/man1/gateway.1`; generating it from the parser
keeps it in step with `--help`. The date is the build's (`SOURCE_DATE_EPOCH` when set), so two
builds of one commit give the same page.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from argparse_manpage.manpage import Manpage

from gateway import __version__

if TYPE_CHECKING:
    import argparse

# Sections --help has no room for: where things live and what else to read.
EXTRA_SECTIONS = {
    "files": (
        "/etc/gateway/gateway.toml: the configuration (a conffile of the Debian package).\n\n"
        "/etc/gateway/credentials/: secrets, one file each, handed to the service as systemd "
        "credentials named gateway_<file name>.\n\n"
        "/var/lib/gateway/: the buffer (LMDB), the dead letters and the reject log.\n\n"
        "/usr/share/doc/gateway/: the README; docs/ (the operator's guide operator-guide.md with "
        "the alert runbook, the configuration reference, the design, performance figures); "
        "config/reference.toml, the reference configuration.\n\n"
        "/usr/share/gateway/: the Grafana dashboard and the Prometheus alert rules."
    ),
    "environment": (
        "GATEWAY__SECTION__KEY=value sets [section] key of the configuration.\n\n"
        "CREDENTIALS_DIRECTORY (set by systemd): relative *_file paths are read from it."
    ),
    "exit status": (
        "0 on success; 1 when a check found a problem or a storage failure stopped the "
        "command; 2 for a configuration the gateway refused (the unit does not restart then)."
    ),
    "see also": "journalctl(1), systemctl(1), systemd.exec(5)",
}


def render(parser: argparse.ArgumentParser) -> str:
    """The troff source of gateway(1)."""
    page = Manpage(parser)
    page.source = f"gateway {__version__}"
    page.manual = "Gateway Manual"
    for heading, content in EXTRA_SECTIONS.items():
        page.add_section(heading, "=", content)
    return str(page)
