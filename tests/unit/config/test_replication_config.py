"""`[replication]`: off by default; a role needs a node, one process and a persistent session."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gateway.config import loader as config
from tests.unit.config.test_config import MINIMAL, problems, write

if TYPE_CHECKING:
    from pathlib import Path


def test_replication_is_off_by_default(tmp_path: Path) -> None:
    settings = config.load(write(tmp_path, MINIMAL), {})
    assert settings.replication.role == "off"
    assert settings.replication.mode == "sync"


def test_a_pair_member_loads_with_its_keys(tmp_path: Path) -> None:
    text = (
        MINIMAL + '\n[replication]\nrole = "standby"\nnode = "box-b"\nmode = "async"\n'
        'standby_away = "hold"\ntakeover_after_s = 3\n'
    )
    r = config.load(write(tmp_path, text), {}).replication
    assert (r.role, r.node, r.mode, r.standby_away, r.takeover_after_s) == (
        "standby",
        "box-b",
        "async",
        "hold",
        3.0,
    )


def test_a_role_without_a_node_name_is_refused_naming_the_key(tmp_path: Path) -> None:
    (found,) = problems(tmp_path, MINIMAL + '\n[replication]\nrole = "primary"\n')
    assert found.startswith("replication: ")
    assert "node: name this box within the pair" in found


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("role", '"leader"', "role"),
        ("mode", '"eventual"', "mode"),
        ("node", '"box a"', "node"),
        ("confirm_timeout_s", "0", "confirm_timeout_s"),
        ("topic_prefix", '"a/#"', "topic_prefix"),
    ],
)
def test_a_bad_value_names_its_key(tmp_path: Path, key: str, value: str, words: str) -> None:
    node = "" if key == "node" else 'node = "a"\n'
    text = MINIMAL + f"\n[replication]\n{node}{key} = {value}\n"
    found = problems(tmp_path, text)
    assert any(f"replication.{words}" in p for p in found), found


def test_replication_with_workers_is_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace("[mqtt]\n", "[mqtt]\nworkers = 2\n", 1)
    text += '\n[replication]\nrole = "primary"\nnode = "a"\n'
    found = problems(tmp_path, text)
    assert any("one process ([mqtt] workers = 1)" in p for p in found), found


def test_replication_without_a_persistent_session_is_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace("[mqtt]\n", "[mqtt]\npersistent_session = false\n", 1)
    text += '\n[replication]\nrole = "standby"\nnode = "b"\n'
    found = problems(tmp_path, text)
    assert any("persistent_session = true" in p for p in found), found
