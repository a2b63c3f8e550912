"""The command line an operator reaches for: help, completion, man page, `try`."""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway import cli

CONFIG = (Path(__file__).parents[2] / "config" / "minimal.toml").read_text()


def gateway(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG.replace("/var/lib/gateway", str(tmp_path / "buffer")))
    return path


def every_parser() -> list[argparse.ArgumentParser]:
    parser = cli.build_parser()
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found += action.choices.values()
    return found


def test_every_option_has_help_and_shows_its_default() -> None:
    """No option is left without a sentence, and a default is always printed beside it."""
    for parser in every_parser():
        text = " ".join(parser.format_help().split())  # the help's own line wrapping undone
        for action in parser._actions:
            if action.help == argparse.SUPPRESS:
                continue
            assert action.help, (parser.prog, action.dest)
            shown = not any(action.default is v for v in (None, False, argparse.SUPPRESS))
            if action.option_strings and shown:
                assert f"(default: {action.default})" in text, (parser.prog, action.dest)
            else:
                assert f"(default: {action.default})" not in text, (parser.prog, action.dest)


def test_help_ends_with_examples() -> None:
    text = gateway("--help").stdout
    assert "examples:" in text
    assert "gateway check-config -c gw.toml --connect" in text
    assert "gateway try" in text


def test_bash_completion_is_generated_from_the_parser(tmp_path: Path) -> None:
    """The script is valid bash and completes subcommands and their options."""
    result = gateway("completion", "bash")
    assert result.returncode == 0, result.stderr
    script = tmp_path / "gateway.bash"
    script.write_text(result.stdout)
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
    for word in ("check-config", "verify-buffer", "--connect", "--payload-file"):
        assert word in result.stdout


def test_the_man_page_renders_without_warnings(tmp_path: Path) -> None:
    """gateway(1) is troff that groff formats cleanly, with every command and the files."""
    result = gateway("man")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(".TH GATEWAY")
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed")
    page = tmp_path / "gateway.1"
    page.write_text(result.stdout)
    rendered = subprocess.run(
        [groff, "-man", "-Tutf8", "-ww", str(page)], capture_output=True, text=True, check=True
    )
    assert rendered.stderr == ""
    # Bold and underline are overstrikes in a terminal's rendering.
    text = re.sub(".\b", "", rendered.stdout).replace("\u2010", "-")
    for word in ("check-config", "verify-buffer", "/etc/gateway/credentials", "EXIT STATUS"):
        assert word in text, word


def test_try_shows_the_readings_and_the_line_protocol(config: Path) -> None:
    """A valid message: its readings and the exact lines the flusher would write; nothing stored."""
    payload = json.dumps({"temp": 21.5, "ts": 1_700_000_000_000, "room": "a b"})
    result = gateway(
        "try", "-c", str(config), "--topic", "sensors/dev-1/climate", "--payload", payload, "--json"
    )
    assert result.returncode == 0, result.stderr
    (shown,) = json.loads(result.stdout)
    assert shown["refused"] == []
    (reading,) = shown["readings"]
    assert reading["device"] == "dev-1"
    assert reading["measurement"] == "climate"
    assert reading["ts_ns"] == 1_700_000_000_000_000_000
    assert shown["line_protocol"] == [
        'climate,device=dev-1 temp=21.5,room="a b" 1700000000000000000'
    ]
    assert not (config.parent / "buffer").exists(), "try must not touch the buffer"


def test_try_names_each_reason_a_message_is_refused(config: Path) -> None:
    """A broken payload and an unmapped topic each print their reason and exit 1."""
    broken = gateway("try", "-c", str(config), "--topic", "sensors/d/m", "--payload", "{not json")
    assert broken.returncode == 1
    assert "refused (" in broken.stdout
    unmapped = gateway("try", "-c", str(config), "--topic", "other/x", "--payload", "{}")
    assert unmapped.returncode == 1
    assert "refused (" in unmapped.stdout


def test_try_reads_a_samples_file_and_names_a_bad_line(config: Path, tmp_path: Path) -> None:
    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "# one good, one binary\n"
        + json.dumps({"topic": "sensors/a/t", "payload": '{"v": 1}'})
        + "\n"
        + json.dumps({"topic": "sensors/b/t", "payload_base64": "/w=="})
        + "\n"
    )
    result = gateway("try", "-c", str(config), "--samples", str(samples))
    assert result.returncode == 1, "the second sample is refused"
    assert result.stdout.count("topic 'sensors/") == 2
    assert "t,device=a v=1" in result.stdout
    samples.write_text('{"topic": 3}\n')
    bad = gateway("try", "-c", str(config), "--samples", str(samples))
    assert bad.returncode == cli.EXIT_CONFIG
    assert f"{samples}:1: not a sample" in bad.stderr
    neither = gateway("try", "-c", str(config), "--topic", "sensors/a/t")
    assert neither.returncode == cli.EXIT_CONFIG
    assert "--payload" in neither.stderr


def test_try_reads_sparkplug_against_the_buffers_state_and_its_own_births(
    config: Path, tmp_path: Path
) -> None:
    """DATA by alias reads with the state the buffer kept, or with a BIRTH earlier in the run."""
    from gateway.buffer.core.admission import Rules  # noqa: PLC0415
    from gateway.buffer.store import Buffer  # noqa: PLC0415
    from gateway.config.loader import load  # noqa: PLC0415
    from gateway.config.sparkplug import SparkplugSettings  # noqa: PLC0415
    from gateway.ingest.core.decode import Decoder  # noqa: PLC0415
    from gateway.sparkplug.core.payload import DataType, encode  # noqa: PLC0415

    text = config.read_text().replace(
        "[buffer]",
        '[[mqtt.subscriptions]]\ntopic = "spBv1.0/#"\nformat = "sparkplug_b"\n\n[buffer]',
    )
    config.write_text(text + '\n[sparkplug]\nmeasurements = { "Speed" = "motor" }\n')
    ms = 1_700_000_000_000
    birth = encode(ms, [("Speed", 4, DataType.Int32, 1, None)], seq=0)
    data = encode(ms, [(None, 4, None, 9, None)], seq=1)
    data_file = tmp_path / "data.bin"
    data_file.write_bytes(data)
    topic = "spBv1.0/g/NDATA/n"

    unknown = gateway("try", "-c", str(config), "--topic", topic, "--payload-file", str(data_file))
    assert unknown.returncode == 1
    assert "sparkplug_unknown_alias" in unknown.stdout

    samples = tmp_path / "samples.jsonl"
    samples.write_text(
        "\n".join(
            json.dumps({"topic": t, "payload_base64": base64.b64encode(p).decode()})
            for t, p in (("spBv1.0/g/NBIRTH/n", birth), (topic, data))
        )
    )
    in_run = gateway("try", "-c", str(config), "--samples", str(samples))
    assert in_run.returncode == 0, in_run.stdout
    assert "motor,edge_node=n,group=g value=9i" in in_run.stdout

    # The state a running gateway stored with the BIRTH, read from its buffer.
    settings = load(config)
    decoder = Decoder(settings.mqtt.subscriptions, settings.limits, SparkplugSettings())
    notes = decoder.decode("spBv1.0/g/NBIRTH/n", birth, ms * 1_000_000).notes
    with Buffer(settings.buffer.path, int(settings.buffer.capacity)) as buffer:
        buffer.admit([], Rules(budget_bytes=buffer.budget_bytes), notes)
    stored = gateway("try", "-c", str(config), "--topic", topic, "--payload-file", str(data_file))
    assert stored.returncode == 0, stored.stdout
    assert "motor,edge_node=n,group=g value=9i" in stored.stdout


def test_try_shows_what_the_deadband_does_with_each_reading(config: Path, tmp_path: Path) -> None:
    """Kept or suppressed and why, per reading, the run's count stored, and the JSON view."""
    config.write_text(
        config.read_text().replace(
            'format = "json"\n',
            'format = "json"\ndeadband = { absolute = 0.5, heartbeat_s = 300 }\n',
        )
    )
    samples = tmp_path / "samples.jsonl"
    ms = 1_700_000_000_000
    samples.write_text(
        "\n".join(
            json.dumps({"topic": "sensors/d/t", "payload": json.dumps({"ts": ms + s, "temp": v})})
            for s, v in ((0, 20.0), (12_000, 20.2), (20_000, 20.6))
        )
    )
    result = gateway("try", "-c", str(config), "--samples", str(samples))
    assert result.returncode == 0, result.stdout
    assert "deadband: kept: first reading of the series" in result.stdout
    assert (
        "deadband: suppressed: all fields within band, 12 s since the last kept (heartbeat 300 s)"
        in result.stdout
    )
    assert "deadband: kept: temp moved 0.6 >= band 0.5" in result.stdout
    assert "line protocol: none (all suppressed)" in result.stdout
    assert result.stdout.rstrip().endswith("2 of 3 readings would be stored")

    as_json = gateway("try", "-c", str(config), "--samples", str(samples), "--json")
    shown = json.loads(as_json.stdout)
    assert [o["stored_readings"] for o in shown] == [1, 0, 1]
    assert [o["deadband"][0].split(":")[0] for o in shown] == ["kept", "suppressed", "kept"]
    assert [len(o["line_protocol"]) for o in shown] == [1, 0, 1]
