"""The generated protobuf module is what the project's .proto compiles to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.sparkplug import core

HERE = Path(core.__file__).parent


def test_generated_module_matches_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"--python_out={tmp_path}",
            str(HERE / "sparkplug_b.proto"),
        ],
        check=True,
    )
    assert (tmp_path / "sparkplug_b_pb2.py").read_text() == (
        HERE / "sparkplug_b_pb2.py"
    ).read_text()
