"""A `[[sinks]]` table's token and password: from a file or the environment, never shown."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from gateway import cli
from gateway.config import loader as config
from gateway.errors import ConfigError
from tests.unit.config.test_config import MINIMAL, problems, write
from tests.unit.config.test_sinks import FAR, NEAR, load, with_sinks

if TYPE_CHECKING:
    from pathlib import Path

TOKEN = "Far-s3cret-t0ken-77"
V1_FAR = FAR.replace('api = "v2"\norg = "o"\nbucket = "b"\n', 'api = "v1"\ndatabase = "t"\n')


def test_a_token_written_in_a_sink_is_refused_without_showing_it(tmp_path: Path) -> None:
    """The loader's rule for [influx] holds in each [[sinks]] table, named by its index."""
    (found,) = problems(tmp_path, with_sinks(NEAR, FAR + f'token = "{TOKEN}"\n'))
    assert found == (
        "sinks.1.token: secrets may not be written in the config file; use token_file or "
        "GATEWAY__SINKS__1__TOKEN"
    )
    (found,) = problems(tmp_path, with_sinks(NEAR + f'password = "{TOKEN}"\n', FAR))
    assert found.startswith("sinks.0.password: secrets may not be written in the config file")
    assert found.endswith("use password_file or GATEWAY__SINKS__0__PASSWORD")


def test_each_sink_reads_its_own_token_file(tmp_path: Path) -> None:
    """Each sink's secret files are read into that sink only, and never shown."""
    (tmp_path / "far-token").write_text(TOKEN + "\n")
    (tmp_path / "near-pw").write_text("near-pw-1\n")
    near = NEAR + f'username = "gw"\npassword_file = "{tmp_path / "near-pw"}"\n'
    settings = load(tmp_path, with_sinks(near, FAR + f'token_file = "{tmp_path / "far-token"}"\n'))
    first, second = settings.resolved_sinks()
    assert second.influx.token is not None
    assert second.influx.token.get_secret_value() == TOKEN
    assert first.influx.token is None
    assert first.influx.password is not None
    assert first.influx.password.get_secret_value() == "near-pw-1"
    assert TOKEN not in repr(settings)
    assert TOKEN not in repr(settings.resolved_sinks())
    assert TOKEN not in json.dumps(config.redacted(settings))


def test_a_relative_token_file_of_a_sink_is_a_systemd_credential(tmp_path: Path) -> None:
    """Under LoadCredential=, a sink's relative token_file is read from the credentials."""
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "gateway_far-token").write_text(TOKEN)
    text = with_sinks(NEAR, FAR + 'token_file = "gateway_far-token"\n')
    settings = load(tmp_path, text, {"CREDENTIALS_DIRECTORY": str(credentials)})
    token = settings.resolved_sinks()[1].influx.token
    assert token is not None
    assert token.get_secret_value() == TOKEN


@pytest.mark.parametrize("content", ["", " \n"])
def test_an_empty_token_file_of_a_sink_is_refused_naming_it(tmp_path: Path, content: str) -> None:
    """An empty or unreadable token file of a sink names `sinks.N.token_file`."""
    file = tmp_path / "far-token"
    file.write_text(content)
    (found,) = problems(tmp_path, with_sinks(NEAR, FAR + f'token_file = "{file}"\n'))
    assert found == (
        f"sinks.1.token_file: {file} is empty or holds only white space; "
        "an empty sinks.1.token is refused"
    )
    (found,) = problems(tmp_path, with_sinks(NEAR, FAR + 'token_file = "/nonexistent/t"\n'))
    assert found.startswith("sinks.1.token_file: cannot read /nonexistent/t")


def test_an_empty_secret_of_a_sink_from_the_environment_names_the_variable(tmp_path: Path) -> None:
    """GATEWAY__SINKS__N__PASSWORD holding only white space is refused by name."""
    (found,) = problems(tmp_path, with_sinks(NEAR, FAR), {"GATEWAY__SINKS__0__PASSWORD": '" "'})
    assert found == (
        "sinks.0.password: GATEWAY__SINKS__0__PASSWORD is empty or holds only white space; "
        "an empty secret is refused"
    )


def test_check_config_masks_every_sinks_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """check-config prints every sink, its token masked."""
    path = write(tmp_path, with_sinks(NEAR, FAR))
    monkey = pytest.MonkeyPatch()
    monkey.setenv("GATEWAY__SINKS__1__TOKEN", TOKEN)
    try:
        assert cli.main(["check-config", str(path)]) == 0
    finally:
        monkey.undo()
    out = capsys.readouterr().out
    shown = json.loads(out)
    assert [sink["name"] for sink in shown["sinks"]] == ["near", "far"]
    assert shown["sinks"][1]["token"] == "**********"
    assert TOKEN not in out


BROKEN = [
    with_sinks(NEAR, FAR.replace("far", "Far")),
    with_sinks(NEAR, FAR.replace("far", "near")),
    with_sinks(NEAR, FAR, flush="live_first = true"),
    with_sinks(FAR + "max_lag_s = 60\n"),
    with_sinks(NEAR, FAR.replace('bucket = "b"\n', "")),
    with_sinks(NEAR, FAR.replace('bucket = "b"\n', 'bucket = "b"\ndatabase = "x"\n')),
    with_sinks(NEAR, FAR + "batch_floor = 20000\n"),
    with_sinks(NEAR, FAR + "max_in_flight = 0\n"),
    with_sinks(NEAR, FAR + "nmae = 1\n"),
    with_sinks(NEAR, V1_FAR + 'username = "gw"\nno_sync = true\n'),
    MINIMAL + "\n" + FAR,
]


@pytest.mark.parametrize("text", BROKEN)
@pytest.mark.parametrize("source", ["environment", "file"])
def test_no_refusal_shows_a_sinks_secret(tmp_path: Path, text: str, source: str) -> None:
    """Whatever is wrong with a sink, its token and password stay out of every message."""
    environ = {}
    if source == "environment":
        environ = {"GATEWAY__SINKS__0__TOKEN": TOKEN, "GATEWAY__SINKS__0__PASSWORD": TOKEN}
    else:
        (tmp_path / "secret").write_text(TOKEN)
        text = text.replace('\nname = "', f'\ntoken_file = "{tmp_path / "secret"}"\nname = "')
    with pytest.raises(ConfigError) as refused:
        config.load(write(tmp_path, text), environ)
    assert refused.value.problems
    assert not any("cannot be set" in problem for problem in refused.value.problems)
    assert all(TOKEN not in problem for problem in refused.value.problems)
    assert TOKEN not in str(refused.value)
    assert refused.value.__cause__ is None
    assert refused.value.__suppress_context__, "pydantic's error, which holds the input, is hidden"
